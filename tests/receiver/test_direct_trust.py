"""Direct Trust on every default connector, driven by openssl s_client presenting a
server certificate: the organisation's servers (trusted by exact certificate, with a role)
hold their role's principals; no certificate, an untrusted, an expired or a removed
server's certificate leaves the session anonymous, as the reference's tables imply."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from smtpgate.connectors import organization
from smtpgate.connectors.enums import TrustedServerRole
from smtpgate.receiver import replies
from smtpgate.receiver.protocol_log import ProtocolLog

from hack.pki import self_signed

from . import postfix_client
from .conftest import Running
from .helpers import Raw
from .test_default_connectors import _defaults

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")

NOT_AUTHENTICATED = f"530 {replies.NOT_AUTHENTICATED.line()[4:]}"
RELAY_DENIED = f"550 {replies.RELAY_DENIED.line()[4:]}"


@dataclass
class Peer:
    cert: pathlib.Path
    key: pathlib.Path

    def trusted(self, name: str, role: TrustedServerRole) -> organization.TrustedServer:
        return organization.trusted(
            name, role, x509.load_pem_x509_certificate(self.cert.read_bytes())
        )


def _peer(folder: pathlib.Path, name: str, days: tuple[float, float] = (-1, 60)) -> Peer:
    cert, key = self_signed(name, [name], days)
    (folder / f"{name}.crt").write_bytes(cert)
    (folder / f"{name}.key").write_bytes(key)
    return Peer(folder / f"{name}.crt", folder / f"{name}.key")


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Peer]:
    folder = tmp_path_factory.mktemp("peers")
    return {
        "mailbox": _peer(folder, "ex02.contoso.com"),
        "edge": _peer(folder, "edge01.contoso.com"),
        "legacy": _peer(folder, "legacy01.contoso.com"),
        "untrusted": _peer(folder, "stranger.example"),
        "expired": _peer(folder, "ex03.contoso.com", (-30, -1)),
    }


def _org(peers: dict[str, Peer]) -> organization.Organization:
    return organization.Organization(
        domain="CONTOSO",
        trusted_servers=(
            peers["mailbox"].trusted("ex02", TrustedServerRole.Mailbox),
            peers["edge"].trusted("edge01", TrustedServerRole.Edge),
            peers["legacy"].trusted("legacy01", TrustedServerRole.Legacy),
            peers["expired"].trusted("ex03", TrustedServerRole.Mailbox),
        ),
    )


@pytest.fixture(scope="module")
def mailbox(tmp_path_factory: pytest.TempPathFactory, pki: Any, peers: dict[str, Peer]) -> Any:
    running = Running(
        tmp_path_factory.mktemp("mailbox"), pki, _defaults("Mailbox"), org=_org(peers)
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, pki: Any, peers: dict[str, Peer]) -> Any:
    running = Running(
        tmp_path_factory.mktemp("edge"), pki, _defaults("Edge"), role="Edge", org=_org(peers)
    )
    yield running
    running.stop()


def s_client(port: int, peer: Peer | None, sender: str, recipient: str) -> list[str]:
    """One message through openssl s_client (STARTTLS, with ``peer``'s certificate): the
    final line of every reply after the handshake (EHLO, MAIL, RCPT, DATA, end of data)."""
    script = (
        f"EHLO ex02.contoso.com\nMAIL FROM:<{sender}>\nRCPT TO:<{recipient}>\nDATA\n"
        "Subject: direct trust\n\nhello\n.\nQUIT\n"
    )
    args = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}"]
    args += ["-quiet", "-nocommands", "-crlf", "-name", "ex02.contoso.com"]
    if peer is not None:
        args += ["-cert", str(peer.cert), "-key", str(peer.key)]
    done = subprocess.run(args, input=script.encode(), capture_output=True, timeout=60)
    lines = done.stdout.decode().splitlines()
    return [line for line in lines if len(line) >= 4 and line[3] == " " and line[:3].isdigit()]


def _delivered(answers: list[str]) -> bool:
    return (
        len(answers) >= 5
        and answers[1][:3] == answers[2][:3] == "250"
        and (answers[3][:3] == "354" and answers[4][:3] == "250")
    )


# port: (trusted Mailbox server delivers, what an anonymous session gets at MAIL or RCPT)
MAILBOX_TABLE = {
    25: (True, RELAY_DENIED),  # Default Frontend: AnonymousUsers may not relay
    465: (True, NOT_AUTHENTICATED),  # Client Proxy: ExchangeServers, ExchangeUsers
    587: (False, NOT_AUTHENTICATED),  # Client Frontend: no ExchangeServer mechanism
    717: (True, NOT_AUTHENTICATED),  # Outbound Proxy Frontend: ExchangeServers only
    2525: (True, NOT_AUTHENTICATED),  # Default: ExchangeLegacyServers, ExchangeServers, users
    475: (True, NOT_AUTHENTICATED),  # Mailbox delivery: ExchangeServer only
}


def _anonymous_outcome(answers: list[str], expected: str) -> None:
    refused = [a for a in answers[1:3] if a[:3] != "250"]
    assert refused and refused[0] == expected, answers


@pytest.mark.parametrize("port", sorted(MAILBOX_TABLE))
def test_trusted_mailbox_server_certificate_per_default_connector(
    mailbox: Running, peers: dict[str, Peer], port: int
) -> None:
    delivers, anonymous = MAILBOX_TABLE[port]
    before = len(mailbox.messages())
    answers = s_client(
        mailbox.port(port), peers["mailbox"], "postmaster@fabrikam.example", "a@foreign.example"
    )
    if delivers:
        assert _delivered(answers), answers
        assert len(mailbox.messages()) == before + 1
    else:
        _anonymous_outcome(answers, anonymous)


@pytest.mark.parametrize("who", ["none", "untrusted", "expired"])
@pytest.mark.parametrize("port", sorted(MAILBOX_TABLE))
def test_without_a_trusted_certificate_the_session_is_anonymous(
    mailbox: Running, peers: dict[str, Peer], port: int, who: str
) -> None:
    peer = None if who == "none" else peers[who]
    answers = s_client(mailbox.port(port), peer, "postmaster@fabrikam.example", "a@foreign.example")
    _anonymous_outcome(answers, MAILBOX_TABLE[port][1])


def test_edge_server_certificate_relays_on_default_connectors_that_grant_exchange_servers(
    mailbox: Running, peers: dict[str, Peer]
) -> None:
    for port in (25, 465, 717, 2525, 475):
        answers = s_client(
            mailbox.port(port), peers["edge"], "postmaster@fabrikam.example", "a@foreign.example"
        )
        assert _delivered(answers), (port, answers)


def test_legacy_server_holds_exchange_legacy_interop_only(
    mailbox: Running, peers: dict[str, Peer]
) -> None:
    # ExchangeLegacyServers is granted on Default (2525) and Default Frontend (25) only.
    for port in (25, 2525):
        answers = s_client(
            mailbox.port(port), peers["legacy"], "postmaster@fabrikam.example", "a@foreign.example"
        )
        assert _delivered(answers), (port, answers)
    for port in (465, 717, 475):
        answers = s_client(
            mailbox.port(port), peers["legacy"], "postmaster@fabrikam.example", "a@foreign.example"
        )
        assert answers[1] == NOT_AUTHENTICATED, (port, answers)


def test_edge_default_connector_trusts_the_organisations_servers(
    edge: Running, peers: dict[str, Peer]
) -> None:
    answers = s_client(
        edge.port(25), peers["mailbox"], "postmaster@contoso.com", "a@foreign.example"
    )
    assert _delivered(answers), answers
    for who in ("none", "untrusted", "expired", "legacy"):
        answers = s_client(
            edge.port(25), peers.get(who), "postmaster@fabrikam.example", "a@foreign.example"
        )
        assert answers[2] == RELAY_DENIED, (who, answers)


def test_a_removed_server_is_not_trusted_after_the_reload(
    start: Any, peers: dict[str, Peer]
) -> None:
    org = _org(peers)
    running = start(_defaults("Mailbox"), org=org)
    port = running.port(717)
    assert _delivered(s_client(port, peers["mailbox"], "a@contoso.com", "b@foreign.example"))
    kept = tuple(s for s in org.trusted_servers if s.name != "ex02")
    config = running.config.model_copy(
        update={"organization": org.model_copy(update={"trusted_servers": kept})}
    )
    running.call(running.receiver.apply(config))
    answers = s_client(port, peers["mailbox"], "a@contoso.com", "b@foreign.example")
    assert answers[1] == NOT_AUTHENTICATED, answers


def test_what_the_certificate_proved_is_in_the_protocol_log(
    start: Any, peers: dict[str, Peer], pki: Any, tmp_path: pathlib.Path
) -> None:
    log_file = tmp_path / "RECV.LOG"
    plog = ProtocolLog(str(log_file))
    connectors = [(n, {**d, "protocolLoggingLevel": "Verbose"}) for n, d in _defaults("Mailbox")]
    running = start(connectors, org=_org(peers), protocol_log=plog)
    assert _delivered(s_client(running.port(717), peers["mailbox"], "a@contoso.com", "b@x.example"))
    s_client(running.port(717), peers["legacy"], "a@contoso.com", "b@x.example")
    s_client(running.port(717), peers["untrusted"], "a@contoso.com", "b@x.example")
    # A plain STARTTLS client (no certificate) stays anonymous.
    raw = Raw(running.port(717))
    raw.reply()
    raw.command("EHLO client.example")
    assert raw.command("STARTTLS")[0] == 220
    raw.starttls(str(pki.ca_file), "mail.contoso.com")
    raw.command("EHLO client.example")
    assert raw.command("MAIL FROM:<a@contoso.com>") == (530, NOT_AUTHENTICATED[4:])
    assert raw.command("QUIT")[0] == 221
    raw.close()
    running.stop()
    plog.close()
    text = log_file.read_text()
    # The protocol log doubles a backslash (Exchange's escaping of its data field).
    assert (
        r"Direct Trust: ex02 (Mailbox) holds CONTOSO\\Exchange Servers, "
        r"MS Exchange\\Hub Transport Servers" in text
    )
    assert "Direct Trust: legacy01 (Legacy) may not submit on this connector; anonymous" in text
    assert "is not a trusted server's" in text
    assert "no client certificate" in text


@pytest.mark.skipif(not postfix_client.AVAILABLE, reason=postfix_client.REASON)
def test_postfix_relays_with_a_trusted_server_certificate_through_outbound_proxy(
    mailbox: Running, peers: dict[str, Peer]
) -> None:
    before = len(mailbox.messages())
    mta = postfix_client.Postfix(mailbox.port(717), peers["mailbox"].cert, peers["mailbox"].key)
    try:
        mta.sendmail("postmaster@fabrikam.example", "friend@foreign.example")
        line = mta.wait_log(r"status=(sent|deferred|bounced)")
        assert "status=sent" in line, line
        assert "250 2.6.0" in line
    finally:
        mta.stop()
    assert len(mailbox.messages()) == before + 1
    assert b"Subject: via postfix" in mailbox.messages()[-1]


@pytest.mark.skipif(not postfix_client.AVAILABLE, reason=postfix_client.REASON)
def test_postfix_with_an_untrusted_certificate_is_refused_on_outbound_proxy(
    mailbox: Running, peers: dict[str, Peer]
) -> None:
    mta = postfix_client.Postfix(mailbox.port(717), peers["untrusted"].cert, peers["untrusted"].key)
    try:
        mta.sendmail("postmaster@fabrikam.example", "friend@foreign.example")
        line = mta.wait_log(r"status=(sent|deferred|bounced)")
        assert "status=bounced" in line, line
        assert NOT_AUTHENTICATED in line
    finally:
        mta.stop()
