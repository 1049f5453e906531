"""STARTTLS, RequireTLS, externally secured connectors, and connector choice by remote range."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from smtpgate.receiver import replies

from .conftest import FQDN
from .helpers import Raw, openssl_starttls


def _line(reply: replies.Reply) -> tuple[int, str]:
    return reply.code, reply.line()[4:]


def _internet(**extra: Any) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "Internet",
            {"usage": "Internet", "bindings": ["0.0.0.0:25"], "tarpitIntervalSeconds": 0, **extra},
        )
    ]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_starttls_gets_the_configured_certificate(start: Any, pki: Any) -> None:
    running = start(_internet())
    done = subprocess.run(
        openssl_starttls(
            running.port(25),
            pki.ca_file,
            "-verify_hostname",
            FQDN,
            "-name",
            "client.example",
            "-brief",
        ),
        input=b"QUIT\r\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    assert "Verification: OK" in output
    assert f"CN = {FQDN}" in output or f"CN={FQDN}" in output


def test_commands_sent_with_starttls_are_not_acted_on(start: Any, pki: Any) -> None:
    raw = Raw(start(_internet()).port(25))
    raw.reply()
    raw.command("EHLO client.example")
    raw.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
    assert raw.reply()[0] == 220
    raw.starttls(str(pki.ca_file), FQDN)
    # Everything before the handshake is forgotten: no reply to the injected MAIL,
    # and EHLO is needed again.
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 503
    code, text = raw.command("EHLO client.example")
    assert code == 250 and "STARTTLS" not in text
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 250


def test_require_tls_refuses_mail_before_starttls(start: Any, pki: Any) -> None:
    raw = Raw(start(_internet(requireTLS=True)).port(25))
    raw.reply()
    raw.command("EHLO client.example")
    assert raw.command("MAIL FROM:<s@example.org>") == _line(replies.MUST_STARTTLS)
    raw.command("STARTTLS")
    raw.starttls(str(pki.ca_file), FQDN)
    raw.command("EHLO client.example")
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 250


def test_require_tls_without_a_certificate_refuses_mail_and_offers_no_starttls(start: Any) -> None:
    raw = Raw(start(_internet(requireTLS=True), with_tls=False).port(25))
    raw.reply()
    assert "STARTTLS" not in raw.command("EHLO client.example")[1]
    assert raw.command("STARTTLS")[0] in (454, 500, 502)
    assert raw.command("MAIL FROM:<s@example.org>") == _line(replies.MUST_STARTTLS)


def test_externally_secured_connector_treats_sessions_as_servers(start: Any) -> None:
    running = start(
        [
            (
                "Secured",
                {
                    "usage": "Custom",
                    "bindings": ["0.0.0.0:2525"],
                    "remoteIPRanges": ["127.0.0.0/8"],
                    "authMechanisms": ["ExternalAuthoritative"],
                    "permissionGroups": ["ExchangeServers"],
                },
            )
        ]
    )
    raw = Raw(running.port(2525))
    raw.reply()
    raw.command("EHLO appserver.example")
    assert raw.command("MAIL FROM:<app@contoso.com>")[0] == 250
    assert raw.command("RCPT TO:<anyone@foreign.example>")[0] == 250
    raw.command("DATA")
    raw.send(b"Subject: s\r\nX-MS-Exchange-Organization-SCL: -1\r\n\r\nb\r\n.\r\n")
    assert raw.reply()[0] == 250
    message = running.messages()[0]
    assert b"Externally Secured Servers" in message and b"authenticated=yes" in message
    # Externally Secured Servers lack the organization header right.
    assert b"X-MS-Exchange-Organization-SCL" not in message


EXCHANGE01 = [
    ("Client Frontend Exchange01", ["0.0.0.0-255.255.255.255"], "220 mx ready for everyone"),
    ("Custom Connector A", ["127.0.1.0-127.0.1.255"], "220 mx ready for A"),
    ("Custom Connector B", ["127.0.1.75"], "220 mx ready for B"),
]


@pytest.mark.parametrize(
    ("source", "banner"),
    [
        ("127.0.1.75", "mx ready for B"),
        ("127.0.1.100", "mx ready for A"),
        ("127.0.0.9", "mx ready for everyone"),
    ],
)
def test_most_specific_range_wins_on_a_live_binding(start: Any, source: str, banner: str) -> None:
    running = start(
        [
            (
                name,
                {
                    "usage": "Custom",
                    "bindings": ["0.0.0.0:25"],
                    "remoteIPRanges": ranges,
                    "banner": greeting,
                },
            )
            for name, ranges, greeting in EXCHANGE01
        ]
    )
    raw = Raw(running.port(25), source=source)
    assert raw.reply() == (220, banner)


def test_client_outside_every_range_is_refused_with_554(start: Any) -> None:
    running = start(
        [
            (
                "Partner",
                {
                    "usage": "Partner",
                    "bindings": ["0.0.0.0:25"],
                    "remoteIPRanges": ["127.0.0.0/30"],
                },
            )
        ]
    )
    raw = Raw(running.port(25), source="127.0.0.9")
    assert raw.reply() == _line(replies.NO_CONNECTOR)
    assert raw.closed()
    inside = Raw(running.port(25), source="127.0.0.2")
    assert inside.reply()[0] == 220


def test_unopenable_binding_is_reported_and_the_others_serve(start: Any) -> None:
    running = start(
        [
            ("Reachable", {"usage": "Internet", "bindings": ["0.0.0.0:25"]}),
            ("Foreign address", {"usage": "Internet", "bindings": ["192.0.2.55:2526"]}),
        ]
    )
    assert "192.0.2.55:2526" in running.receiver.failed
    assert "cannot listen" in running.receiver.failed["192.0.2.55:2526"]
    raw = Raw(running.port(25))
    assert raw.reply()[0] == 220
