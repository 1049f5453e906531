"""Each default connector of the reference, running, behaves as its table row says."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from smtpgate.connectors import defaults
from smtpgate.receiver import replies

from .conftest import FQDN, PASSWORDS, Running
from .helpers import Raw, plain

MESSAGE = b"Subject: test\r\n\r\nhello\r\n"


def _defaults(role: str) -> list[tuple[str, dict[str, Any]]]:
    rows = defaults.MAILBOX if role == "Mailbox" else defaults.EDGE
    out = [
        (d.named("ex01"), d.spec("ex01").model_dump(by_alias=True, exclude={"server"}))
        for d in rows
    ]
    if role == "Mailbox":
        delivery = defaults.MAILBOX_DELIVERY
        out.append(
            (
                delivery.named("ex01"),
                delivery.spec("ex01").model_dump(by_alias=True, exclude={"server"}),
            )
        )
    for _, data in out:
        data["tarpitIntervalSeconds"] = 0
    return out


@pytest.fixture(scope="module")
def mailbox(tmp_path_factory: pytest.TempPathFactory, pki: Any) -> Any:
    running = Running(tmp_path_factory.mktemp("mailbox"), pki, _defaults("Mailbox"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, pki: Any) -> Any:
    running = Running(tmp_path_factory.mktemp("edge"), pki, _defaults("Edge"), role="Edge")
    yield running
    running.stop()


def _ehlo(
    running: Running, port: int, tls: bool = False, pki: Any = None, host: str = "127.0.0.1"
) -> set[str]:
    raw = Raw(running.port(port), source="::1" if ":" in host else "127.0.0.1", host=host)
    assert raw.reply()[0] == 220
    if tls:
        raw.command("EHLO client.example")
        assert raw.command("STARTTLS")[0] == 220
        raw.starttls(str(pki.ca_file), FQDN)
    code, text = raw.command("EHLO client.example")
    raw.close()
    assert code == 250
    return set(text.splitlines()[1:])


# port, STARTTLS offered, AUTH before TLS, AUTH after TLS, anonymous may submit, user may relay
ROWS = [
    (587, True, False, True, False, True),  # Client Frontend: ExchangeUsers, BasicAuthRequireTLS
    (25, True, False, True, True, False),  # Default Frontend: no group for Authenticated Users
    (717, True, False, True, False, False),  # Outbound Proxy Frontend: ExchangeServers only
    (465, True, False, True, False, True),  # Client Proxy: ExchangeServers, ExchangeUsers
    (2525, True, True, True, False, True),  # Default: BasicAuth without RequireTLS, ExchangeUsers
    (475, True, False, False, False, False),  # Mailbox delivery: ExchangeServer (Direct Trust)
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: str(r[0]))
def test_mailbox_default_connector_advertises_as_its_row(
    mailbox: Running, pki: Any, row: tuple
) -> None:
    port, starttls, auth_plain_text, auth_tls, _, _ = row
    before = _ehlo(mailbox, port)
    assert ("STARTTLS" in before) is starttls
    assert ("AUTH LOGIN PLAIN" in before) is auth_plain_text
    if starttls:
        after = _ehlo(mailbox, port, tls=True, pki=pki)
        assert "STARTTLS" not in after
        assert ("AUTH LOGIN PLAIN" in after) is auth_tls


@pytest.mark.parametrize("row", ROWS, ids=lambda r: str(r[0]))
def test_mailbox_default_connector_anonymous_submission(mailbox: Running, row: tuple) -> None:
    port, _, _, _, anonymous_ok, _ = row
    with mailbox.client(port) as smtp:
        smtp.ehlo("client.example")
        code, text = smtp.mail("sender@example.org")
        if anonymous_ok:
            assert code == 250
            assert smtp.rcpt("user@contoso.com")[0] == 250
            code, text = smtp.rcpt("someone@foreign.example")
            assert (code, text.decode()) == (550, replies.RELAY_DENIED.line()[4:])
        else:
            assert (code, text.decode()) == (530, replies.NOT_AUTHENTICATED.line()[4:])


@pytest.mark.parametrize("row", [r for r in ROWS if r[3]], ids=lambda r: str(r[0]))
def test_mailbox_default_connector_authenticated_user(
    mailbox: Running, pki: Any, row: tuple
) -> None:
    port, _, _, _, _, user_relays = row
    with mailbox.client(port) as smtp:
        smtp.starttls(context=pki.client_context())
        smtp.ehlo("client.example")
        try:
            smtp.login("alice", PASSWORDS["alice"])
        except smtplib.SMTPAuthenticationError as err:
            # No permission group grants Authenticated Users ms-Exch-SMTP-Submit here.
            assert not user_relays
            assert (err.smtp_code, err.smtp_error.decode()) == (
                530,
                replies.AUTH_NOT_PERMITTED.line()[4:],
            )
            return
        assert user_relays
        assert smtp.sendmail("alice@contoso.com", ["friend@foreign.example"], MESSAGE) == {}


def test_wrong_password_is_refused_on_client_frontend(mailbox: Running, pki: Any) -> None:
    raw = Raw(mailbox.port(587))
    raw.reply()
    raw.command("EHLO client.example")
    raw.command("STARTTLS")
    raw.starttls(str(pki.ca_file), FQDN)
    raw.command("EHLO client.example")
    assert raw.command(f"AUTH PLAIN {plain('alice', 'wrong')}") == (
        535,
        "5.7.8 Authentication credentials invalid",
    )
    raw.close()


def test_auth_before_tls_is_refused_where_required(mailbox: Running) -> None:
    raw = Raw(mailbox.port(587))
    raw.reply()
    raw.command("EHLO client.example")
    code, _ = raw.command(f"AUTH PLAIN {plain('alice', PASSWORDS['alice'])}")
    assert code == 538
    raw.close()


def test_ipv6_binding_serves_the_same_connector(mailbox: Running) -> None:
    with mailbox.client(25, source="::1", host="::1") as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail("sender@example.org")[0] == 250
        assert smtp.rcpt("user@contoso.com")[0] == 250


def test_edge_default_connector(edge: Running, pki: Any) -> None:
    assert "STARTTLS" in _ehlo(edge, 25)
    after = _ehlo(edge, 25, tls=True, pki=pki)
    assert not any(line.startswith("AUTH") for line in after)
    with edge.client(25) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail("sender@example.org")[0] == 250
        assert smtp.rcpt("user@contoso.com")[0] == 250
        assert smtp.rcpt("user@foreign.example")[0] == 550


def test_edge_default_connector_binds_ipv4_only(edge: Running) -> None:
    assert all(b.version == 4 for c in edge.config.connectors for b in c.parsed_bindings)
    with pytest.raises(OSError):
        Raw(edge.port(25), source="::1", host="::1")


def test_banner_and_ehlo_name_come_from_the_connector(start: Any) -> None:
    running = start(
        [
            (
                "Custom",
                {
                    "usage": "Internet",
                    "bindings": ["0.0.0.0:25"],
                    "fqdn": "mx1.contoso.com",
                    "banner": "220 mx1.contoso.com Welcome",
                },
            )
        ]
    )
    raw = Raw(running.port(25))
    assert raw.reply() == (220, "mx1.contoso.com Welcome")
    code, text = raw.command("EHLO client.example")
    assert text.splitlines()[0] == "mx1.contoso.com"
    raw.close()
