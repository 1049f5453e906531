"""AUTH GSSAPI (RFC 4752) against a real MIT KDC, with curl's SMTP client: a Kerberos user
of the realm is an authenticated user on connectors with Integrated."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from smtpgate.connectors import defaults
from smtpgate.connectors.enums import ServerRole
from smtpgate.connectors.kerberos import KerberosConfig

from .conftest import Running
from .kdc import REALM

MESSAGE = b"Subject: kerberos\r\n\r\nsent with a Kerberos ticket\r\n"
CLIENT_FRONTEND = 587

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def default_connectors(role: str = "Mailbox") -> list[tuple[str, dict[str, Any]]]:
    """The reference's default connectors of ``role`` (the implicit 475 one on Mailbox),
    without the tarpit."""
    rows = list(defaults.MAILBOX if role == "Mailbox" else defaults.EDGE)
    if role == "Mailbox":
        rows.append(defaults.MAILBOX_DELIVERY)
    out = []
    for row in rows:
        data = row.spec("ex01").model_dump(by_alias=True, exclude={"server"})
        data["tarpitIntervalSeconds"] = 0
        out.append((row.named("ex01"), data))
    return out


def kerberos_config(realm: Any) -> KerberosConfig:
    return KerberosConfig(
        keytab_file=str(realm.keytab),
        realm=REALM,
        service_principals=realm.service_principals,
        servers={realm.server_principal: ServerRole.Mailbox},
    )


def curl(
    port: int,
    env: dict[str, str],
    mechanism: str,
    user: str = ":",
    host: str = "mail.contoso.com",
    sender: str = "alice@contoso.com",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[bytes]:
    """curl's SMTP client sends MESSAGE after AUTH with ``mechanism``, to ``host`` resolved
    to loopback (the ticket is for smtp/<host>)."""
    return subprocess.run(
        [
            "curl",
            "-sS",
            "-v",
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            f"smtp://{host}:{port}/client.example",
            "--login-options",
            f"AUTH={mechanism}",
            "-u",
            user,
            "--mail-from",
            sender,
            "--mail-rcpt",
            "bob@contoso.com",
            "-T",
            "-",
            *extra,
        ],
        input=MESSAGE,
        env=env,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def kerberized(start: Any, realm: Any) -> Running:
    running: Running = start(default_connectors(), kerberos=kerberos_config(realm))
    return running


@needs_curl
def test_curl_authenticates_with_gssapi_and_submits(kerberized: Running, realm: Any) -> None:
    env = realm.ccache("alice", "alice-secret")
    done = curl(kerberized.port(CLIENT_FRONTEND), env, "GSSAPI")
    log = done.stderr.decode(errors="replace")
    assert done.returncode == 0, log
    assert "AUTH GSSAPI" in log and "235 2.7.0" in log
    [message] = kerberized.messages()
    assert message.endswith(MESSAGE)


@needs_curl
def test_curl_gssapi_on_localhost_principal(kerberized: Running, realm: Any) -> None:
    env = realm.ccache("bob", "bob-secret")
    done = curl(
        kerberized.port(CLIENT_FRONTEND), env, "GSSAPI", host="localhost", sender="bob@contoso.com"
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert len(kerberized.messages()) == 1


@needs_curl
def test_gssapi_user_may_send_only_as_own_addresses(kerberized: Running, realm: Any) -> None:
    env = realm.ccache("bob", "bob-secret")
    done = curl(kerberized.port(CLIENT_FRONTEND), env, "GSSAPI", sender="alice@contoso.com")
    log = done.stderr.decode(errors="replace")
    assert "235 2.7.0" in log
    assert "550 5.7.1" in log and done.returncode != 0
    assert kerberized.messages() == []


@needs_curl
def test_without_a_ticket_curl_cannot_use_gssapi(
    kerberized: Running, realm: Any, tmp_path: Any
) -> None:
    env = {**realm.kdc.env, "KRB5CCNAME": f"FILE:{tmp_path / 'empty'}"}
    done = curl(kerberized.port(CLIENT_FRONTEND), env, "GSSAPI")
    assert done.returncode != 0
    assert kerberized.messages() == []
