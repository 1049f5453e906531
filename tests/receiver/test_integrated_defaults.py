"""The reference's default connectors (587, 25, 717, 465, 2525, the implicit 475, and the
Edge's 25) with Kerberos and NTLM configured: each offers the mechanisms its row's
Integrated and ExchangeServer give, accepts them, and refuses the rest. Users
authenticate with AUTH GSSAPI and AUTH NTLM where the row has Integrated; the
organisation's servers with X-EXPS GSSAPI (and AUTH GSSAPI) where it has ExchangeServer."""

from __future__ import annotations

import base64
import pathlib
from typing import Any

import pytest
import spnego
from smtpgate.connectors.kerberos import NtlmConfig

from .conftest import Running
from .helpers import Raw
from .kdc import REALM
from .test_gssapi import default_connectors, kerberos_config
from .test_integrated_hostile import b64, finish_gssapi, initiator
from .test_ntlm import hash_file

OK = (235, "2.7.0 Authentication successful")
FAILED = (535, "5.7.8 Authentication credentials invalid")
UNKNOWN = (504, "5.7.4 Unrecognized authentication type")
SERVER = "smtp/ex02.contoso.com"

NOT_PERMITTED = (530, "5.7.1 Client is not permitted to submit on this connector")
# port: (AUTH mechanisms offered before STARTTLS, X-EXPS mechanisms, a user's logon) as the
# row gives them: a user who proves who they are may submit where the row has
# ExchangeUsers, and is refused the logon where it has not (as with BasicAuth).
MAILBOX_ROWS = {
    587: ("GSSAPI NTLM", None, OK),  # Client Frontend: Integrated, BasicAuthRequireTLS
    25: ("GSSAPI NTLM", "GSSAPI", NOT_PERMITTED),  # Default Frontend: + ExchangeServer
    717: ("GSSAPI NTLM", "GSSAPI", NOT_PERMITTED),  # Outbound Proxy Frontend
    465: ("GSSAPI NTLM", "GSSAPI", OK),  # Client Proxy
    2525: ("GSSAPI NTLM LOGIN PLAIN", "GSSAPI", OK),  # Default: BasicAuth without RequireTLS
    475: ("GSSAPI", "GSSAPI", FAILED),  # Mailbox delivery: ExchangeServer only
}


@pytest.fixture(params=["Mailbox", "Edge"])
def server(
    request: Any, start: Any, realm: Any, tmp_path: pathlib.Path
) -> tuple[Running, dict[int, Any]]:
    ntlm = NtlmConfig(hashes_file=str(hash_file(tmp_path)))
    role = request.param
    running: Running = start(
        default_connectors(role), role=role, kerberos=kerberos_config(realm), ntlm=ntlm
    )
    rows = MAILBOX_ROWS if role == "Mailbox" else {25: ("GSSAPI", "GSSAPI", FAILED)}
    return running, rows


def session(running: Running, port: int) -> tuple[Raw, str]:
    raw = Raw(running.port(port))
    assert raw.reply()[0] == 220
    code, text = raw.command("EHLO client.example")
    assert code == 250
    return raw, text


def keyword(text: str, name: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return line[len(name) + 1 :]
    return None


def gssapi_logon(
    raw: Raw, verb: str, target: str = f"smtp/mail.contoso.com@{REALM}"
) -> tuple[int, str]:
    context = initiator(target)
    first = raw.command(f"{verb} GSSAPI " + b64(context.step()))
    return finish_gssapi(raw, context, first) if first[0] == 334 else first


def ntlm_logon(raw: Raw) -> tuple[int, str]:
    client = spnego.client("alice", "alice-secret", protocol="ntlm")
    code, text = raw.command("AUTH NTLM " + b64(client.step()))
    if code != 334:
        return code, text
    return raw.command(b64(client.step(base64.b64decode(text))))


def test_each_row_advertises_its_mechanisms(server: tuple[Running, dict[int, Any]]) -> None:
    running, rows = server
    for port, (auth, exps, _) in rows.items():
        raw, text = session(running, port)
        assert keyword(text, "AUTH") == auth, port
        assert keyword(text, "X-EXPS") == exps, port


def test_users_log_on_with_gssapi_only_where_integrated(
    server: tuple[Running, dict[int, Any]], as_user: Any
) -> None:
    running, rows = server
    as_user("alice", "alice-secret")
    for port, (_, exps, user) in rows.items():
        raw, _ = session(running, port)
        assert gssapi_logon(raw, "AUTH") == user, port
        if user == OK:
            assert raw.command("MAIL FROM:<alice@contoso.com>")[0] == 250
        raw, _ = session(running, port)
        assert gssapi_logon(raw, "X-EXPS") == (FAILED if exps else UNKNOWN), port


def test_users_log_on_with_ntlm_only_where_integrated(
    server: tuple[Running, dict[int, Any]],
) -> None:
    running, rows = server
    for port, (auth, _, user) in rows.items():
        raw, _ = session(running, port)
        assert ntlm_logon(raw) == (user if "NTLM" in auth else UNKNOWN), port


def test_organisation_servers_log_on_with_x_exps_where_exchange_server(
    server: tuple[Running, dict[int, Any]], as_user: Any
) -> None:
    running, rows = server
    as_user(SERVER)
    for port, (_, exps, _) in rows.items():
        raw, _ = session(running, port)
        if exps is None:
            assert gssapi_logon(raw, "X-EXPS") == UNKNOWN, port
            # AUTH GSSAPI here is for users: a server's principal is nobody's.
            raw, _ = session(running, port)
            assert gssapi_logon(raw, "AUTH") == FAILED, port
            continue
        assert gssapi_logon(raw, "X-EXPS") == OK, port
        # An Exchange server may relay anywhere (ms-Exch-SMTP-Accept-Any-Recipient).
        assert raw.command("MAIL FROM:<alice@contoso.com>")[0] == 250, port
        assert raw.command("RCPT TO:<someone@example.net>")[0] == 250, port
        code, text = raw.command("EHLO client.example")
        assert keyword(text, "X-EXPS") is None  # once authenticated, no more


def test_x_exps_syntax_and_order(server: tuple[Running, dict[int, Any]]) -> None:
    running, rows = server
    port = 25
    raw, _ = session(running, port)
    assert raw.command("X-EXPS") == (501, "5.5.4 Syntax: X-EXPS <mechanism> [initial-response]")
    assert raw.command("X-EXPS NTLM") == UNKNOWN
    raw = Raw(running.port(port))
    raw.reply()
    assert raw.command("X-EXPS GSSAPI")[0] == 503  # EHLO first


def test_initial_responses_are_not_logged() -> None:
    from smtpgate.receiver import protocol_log

    assert protocol_log.redact("X-EXPS GSSAPI YIIC/wYJKoZI") == "X-EXPS GSSAPI ****"
    assert protocol_log.redact("AUTH NTLM TlRMTVNTUAAB") == "AUTH NTLM ****"
