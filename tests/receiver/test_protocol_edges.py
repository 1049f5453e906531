"""The edges of the protocol, byte for byte: AUTH sequencing, line limits, control
characters, talking before the greeting, junk commands."""

from __future__ import annotations

import base64
import csv
import logging
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from smtpgate.receiver import replies
from smtpgate.receiver.protocol_log import EscapingFormatter, ProtocolLog

from .conftest import PASSWORDS, free_port
from .helpers import Raw, custom_connector, expected, plain, start_process


def _connector(**extra: Any) -> list[tuple[str, dict[str, Any]]]:
    return custom_connector("Edge", **extra)


def _greeted(running: Any, helo: str = "EHLO client.example") -> Raw:
    raw = Raw(running.port(25))
    assert raw.reply()[0] == 220
    assert raw.command(helo)[0] == 250
    return raw


def _dropped(reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "smtpgate_sessions_dropped_total", {"connector": "Edge", "reason": reason}
        )
        or 0.0
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- AUTH ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        "AUTH PLAIN",
        "AUTH LOGIN",
        f"AUTH PLAIN {plain('alice', PASSWORDS['alice'])}",
        f"AUTH LOGIN {_b64(b'alice')}",
        "AUTH CRAM-MD5",
        "AUTH NO-SUCH-MECHANISM",
    ],
)
def test_auth_inside_a_mail_transaction_gets_503_and_nothing_else(start: Any, auth: str) -> None:
    running = start(_connector())
    raw = _greeted(running)
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
    assert raw.command(auth) == expected(replies.AUTH_IN_TRANSACTION)
    # No challenge is waiting, and no credentials were taken: still anonymous.
    assert raw.command("NOOP")[0] == 250
    assert raw.command("RSET")[0] == 250
    assert raw.command(f"AUTH PLAIN {plain('alice', PASSWORDS['alice'])}") == expected(
        replies.AUTH_OK
    )


@pytest.mark.parametrize("challenged", [False, True])
def test_plain_acting_for_another_identity_is_refused(start: Any, challenged: bool) -> None:
    running = start(_connector())
    raw = _greeted(running)
    blob = _b64(f"bob\0alice\0{PASSWORDS['alice']}".encode())
    if challenged:
        assert raw.command("AUTH PLAIN")[0] == 334
        assert raw.command(blob) == expected(replies.AUTH_AUTHZID)
    else:
        assert raw.command(f"AUTH PLAIN {blob}") == expected(replies.AUTH_AUTHZID)
    same = _b64(f"alice\0alice\0{PASSWORDS['alice']}".encode())
    assert raw.command(f"AUTH PLAIN {same}") == expected(replies.AUTH_OK)


def test_an_overlong_auth_login_answer_is_refused_whole(start: Any) -> None:
    running = start(_connector())
    raw = _greeted(running)
    assert raw.command("AUTH LOGIN")[0] == 334
    raw.send(b"QUIT " * 4000 + b"\r\nNOOP\r\n")
    assert raw.reply() == expected(replies.COMMAND_TOO_LONG)
    assert raw.reply()[0] == 250  # the NOOP: nothing of the long line was a command
    assert raw.command("QUIT")[0] == 221


def test_an_overlong_auth_plain_line_is_refused_whole(start: Any) -> None:
    running = start(_connector())
    raw = _greeted(running)
    raw.send(b"AUTH PLAIN " + b"A" * 20000 + b"\r\nNOOP\r\n")
    assert raw.reply() == expected(replies.COMMAND_TOO_LONG)
    assert raw.reply()[0] == 250
    assert raw.command("QUIT")[0] == 221


# -- command lines ---------------------------------------------------------------------


def _padded(command: str, octets: int) -> bytes:
    """``command`` padded with x to ``octets`` octets, CRLF included."""
    return command.encode() + b"x" * (octets - len(command) - 2) + b"\r\n"


def test_command_lines_may_have_512_octets_with_crlf(start: Any) -> None:
    raw = _greeted(start(_connector()))
    for octets, answer in [(512, 250), (513, 500), (514, 500), (512, 250)]:
        raw.send(_padded("NOOP ", octets))
        code, text = raw.reply()
        assert code == answer, octets
        if code == 500:
            assert (code, text) == expected(replies.COMMAND_TOO_LONG)


def _mail(octets: int) -> bytes:
    """A MAIL line of ``octets`` octets, CRLF included (a long local part)."""
    head, tail = b"MAIL FROM:<", b"@contoso.com>\r\n"
    return head + b"x" * (octets - len(head) - len(tail)) + tail


def test_mail_may_be_longer_by_what_its_extensions_add(start: Any) -> None:
    running = start(_connector())
    # SIZE (26) and DSN (100) are offered: MAIL may have 638 octets.
    ehlo = _greeted(running)
    ehlo.send(_mail(638))
    assert ehlo.reply()[0] == 250
    ehlo.command("RSET")
    ehlo.send(_mail(639))
    assert ehlo.reply() == expected(replies.COMMAND_TOO_LONG)
    # After HELO no extension was offered: 512.
    helo = _greeted(running, "HELO client.example")
    helo.send(_mail(513))
    assert helo.reply() == expected(replies.COMMAND_TOO_LONG)
    helo.send(_mail(512))
    assert helo.reply()[0] == 250


@pytest.mark.parametrize("control", [b"\x00", b"\x1b", b"\x7f", b"\x01", b"\x0b"], ids=repr)
@pytest.mark.parametrize(
    "command",
    [
        b"EHLO client{}.example",
        b"HELO client{}.example",
        b"MAIL FROM:<s{}x@example.org>",
        b"RCPT TO:<u{}x@contoso.com>",
        b'RCPT TO:<"u{}x"@contoso.com>',
    ],
)
def test_control_characters_in_arguments_are_refused(
    start: Any, command: bytes, control: bytes
) -> None:
    running = start(_connector())
    raw = _greeted(running)
    if command.startswith(b"RCPT"):
        assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
    raw.send(command.replace(b"{}", control) + b"\r\n")
    assert raw.reply() == expected(replies.CONTROL_IN_COMMAND)
    if not command.startswith(b"RCPT"):
        assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
    assert raw.command("RCPT TO:<u@contoso.com>")[0] == 250
    # Nothing of the refused line went into the transaction.
    assert raw.command("DATA")[0] == 354
    raw.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert raw.reply()[0] == 250
    (message,) = running.messages()
    assert control not in message.split(b"\r\n\r\n", 1)[0]


# -- talking first ---------------------------------------------------------------------


def test_a_client_that_speaks_before_the_greeting_is_closed(start: Any) -> None:
    running = start(_connector())
    before = _dropped("pregreet")
    for _ in range(5):
        # The receiver is busy for a moment: the client's bytes are there before it greets.
        running.loop.call_soon_threadsafe(time.sleep, 0.1)
        raw = Raw(running.port(25))
        raw.send(b"EHLO early.example\r\nMAIL FROM:<s@example.org>\r\n")
        assert raw.replies_until_closed() == [expected(replies.PREGREET)]
    assert _dropped("pregreet") == before + 5
    assert running.messages() == []
    # A client that waits for the greeting is served.
    assert _greeted(running).command("NOOP")[0] == 250


# -- junk commands ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [
        b"NOOP\r\n",
        b"RSET\r\n",
        b"HELP\r\n",
        b"VRFY <u@contoso.com>\r\n",
        b"EHLO client.example\r\n",
        b"HELO client.example\r\n",
        b"MAIL FROM:<s@example.org>\r\nRSET\r\n",
    ],
    ids=lambda b: b.split()[0].decode(),
)
def test_junk_commands_beyond_the_limit_close_the_session(start: Any, junk: bytes) -> None:
    running = start(_connector())
    raw = _greeted(running)
    before = _dropped("junk-commands")
    answers: list[tuple[int, str]] = []
    # Pipelined in batches, each read before the next: a server that closes with unread
    # bytes from the client resets the connection, and the client may lose the last reply.
    lines = junk.count(b"\r\n")
    while len(answers) < 5000 and (not answers or answers[-1][0] < 400):
        raw.send(junk * (20 // lines))
        for _ in range(20 // lines * lines):
            answers.append(raw.reply())
            if answers[-1][0] >= 400:
                break
    assert answers[-1] == expected(replies.TOO_MANY_JUNK_COMMANDS)
    assert raw.closed()
    assert len(answers) == 101
    assert all(code < 400 for code, _ in answers[:-1])
    assert _dropped("junk-commands") == before + 1


def test_many_messages_on_one_connection_are_not_junk(start: Any) -> None:
    running = start(_connector())
    raw = _greeted(running)
    for n in range(150):
        assert raw.command("NOOP")[0] == 250
        assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
        assert raw.command("RCPT TO:<u@contoso.com>")[0] == 250
        assert raw.command("DATA")[0] == 354
        raw.send(f"Subject: {n}\r\n\r\nbody\r\n.\r\n".encode())
        assert raw.reply()[0] == 250
        assert raw.command("RSET")[0] == 250
    assert raw.command("QUIT")[0] == 221
    assert len(running.messages()) == 150


# -- logs ------------------------------------------------------------------------------


def test_plain_text_after_starttls_logs_one_line(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    running = start(_connector())
    caplog.set_level(logging.DEBUG)
    raw = _greeted(running)
    assert raw.command("STARTTLS")[0] == 220
    raw.send(b"EHLO not-tls.example\r\nMAIL FROM:<s@example.org>\r\n")
    assert raw.closed()
    time.sleep(0.2)
    (shown,) = [r for r in caplog.records if r.levelno >= logging.INFO and r.name != "mail.log"]
    assert shown.exc_info is None and "\n" not in shown.getMessage()
    assert "STARTTLS" in shown.getMessage()


HOSTILE = [b"NOOP \x1b]0;owned\x07\x1b[2J\r\n", b"NOOP a\x00b\x7fc\r\n", b"NOOP one\rtwo\r\n"]
HOSTILE_COMMANDS = [b"\x1b[31mXYZZY\r\n", b"EHLO a\x00b\r\n", b"EHLO a\rb\r\n", *HOSTILE]
RAW_CONTROLS = [bytes([c]) for c in (*range(0, 9), *range(11, 32), 127)]


def test_the_protocol_log_escapes_control_characters(start: Any, tmp_path: pathlib.Path) -> None:
    log_file = tmp_path / "RECV.LOG"
    plog = ProtocolLog(str(log_file))
    running = start(_connector(protocolLoggingLevel="Verbose"), protocol_log=plog)
    raw = _greeted(running)
    for line in HOSTILE:
        raw.send(line)
        assert raw.reply()[0] in (500, 501)
    running.stop()
    plog.close()
    written = log_file.read_bytes()
    assert not any(c in written for c in RAW_CONTROLS if c != b"\n")
    rows = list(csv.reader(written.decode().splitlines()[5:]))
    received = [row[7] for row in rows if row[6] == "<"]
    assert r"NOOP \x1b]0;owned\x07\x1b[2J" in received
    assert r"NOOP a\x00b\x7fc" in received
    assert r"NOOP one\x0dtwo" in received


def test_the_process_log_escapes_control_characters(tmp_path: pathlib.Path) -> None:
    port = free_port()
    proc = start_process(tmp_path, port, "--log-level", "DEBUG", stderr=subprocess.PIPE)
    try:
        for line in HOSTILE_COMMANDS:
            raw = Raw(port)
            raw.reply()
            raw.send(line)
            assert raw.reply()[0] >= 500
            raw.command("QUIT")
            raw.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    assert not any(c in stderr for c in RAW_CONTROLS if c != b"\n")


def test_log_lines_escape_control_characters_in_messages_and_tracebacks() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("bad \x1b[2J input\r\nforged line")
    except ValueError:
        record = logging.LogRecord(
            "t", logging.WARNING, "", 0, "from %s", ("a\x00b\nINFO forged",), sys.exc_info()
        )
    text = formatter.format(record)
    head, *trace = text.split("\n")
    assert head == r"WARNING from a\x00b\x0aINFO forged"
    assert r"ValueError: bad \x1b[2J input\x0d" in trace
    assert "forged line" in trace
    assert "\x1b" not in text and "\r" not in text


# -- addresses -------------------------------------------------------------------------


def _envelope(message: bytes) -> str:
    first, _ = message.split(b"\r\n", 1)
    assert first.startswith(b"X-Smtpgate-Envelope: ")
    return first.decode()


def _send(raw: Raw, sender: str, recipients: list[str]) -> None:
    assert raw.command(f"MAIL FROM:{sender}")[0] == 250
    for recipient in recipients:
        assert raw.command(f"RCPT TO:{recipient}")[0] == 250
    assert raw.command("DATA")[0] == 354
    raw.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert raw.reply()[0] == 250


@pytest.mark.parametrize("spelling", ["<postmaster>", "<Postmaster>", "<POSTMASTER>"])
def test_postmaster_without_a_domain_is_this_servers_postmaster(start: Any, spelling: str) -> None:
    # The FQDN mail.contoso.com is in contoso.com; fabrikam.org sorts first.
    running = start(
        _connector(), domains=[{"domainName": "fabrikam.org"}, {"domainName": "contoso.com"}]
    )
    raw = _greeted(running)
    _send(raw, "<s@example.org>", [spelling])
    (message,) = running.messages()
    assert _envelope(message).endswith("to=<postmaster@contoso.com>")


def test_postmaster_goes_to_the_first_authoritative_domain_otherwise(start: Any) -> None:
    domains = [
        {"domainName": "relay.example", "domainType": "InternalRelay"},
        {"domainName": "tailspin.example"},
        {"domainName": "wingtip.example"},
    ]
    running = start(_connector(), domains=domains)
    _send(_greeted(running), "<s@example.org>", ["<postmaster>"])
    (message,) = running.messages()
    assert _envelope(message).endswith("to=<postmaster@tailspin.example>")


def test_postmaster_without_a_domain_is_no_sender(start: Any) -> None:
    raw = _greeted(start(_connector()))
    assert raw.command("MAIL FROM:<postmaster>") == expected(replies.BAD_ADDRESS)


def test_local_parts_longer_than_64_octets_are_accepted(start: Any) -> None:
    # SRS and VERP senders routinely exceed RFC 5321's 64; Postfix accepts them too.
    running = start(_connector())
    sender = "SRS0=Hx2q=T4=example.org=" + "s" * 40 + "@forwarder.example"
    recipient = "u" * 65 + "@contoso.com"
    assert len(sender.split("@")[0]) > 64
    _send(_greeted(running), f"<{sender}>", [f"<{recipient}>"])
    (message,) = running.messages()
    assert (
        _envelope(message)
        == f"X-Smtpgate-Envelope: from=<{sender.replace('=', '+3D')}>; to=<{recipient}>"
    )


def test_the_envelope_header_encodes_quoted_local_parts(start: Any) -> None:
    running = start(_connector())
    raw = _greeted(running)
    _send(raw, '<"x>; to=<evil@victim.example>; y=<"@sender.example>', ["<u@contoso.com>"])
    (message,) = running.messages()
    header = _envelope(message)
    assert header == (
        "X-Smtpgate-Envelope: from=<+22x+3E+3B+20to+3D+3Cevil@victim.example+3E+3B+20y+3D"
        "+3C+22@sender.example>; to=<u@contoso.com>"
    )
    # A naive reader finds the one real recipient and one sender.
    assert re.findall(r"to=<([^>]*)>", header) == ["u@contoso.com"]
    assert re.findall(r"from=<([^>]*)>", header)[0].endswith("@sender.example")


# -- timers ----------------------------------------------------------------------------


def _slow_data(start: Any) -> tuple[Any, Raw]:
    running = start(_connector(connectionInactivityTimeoutSeconds=1, connectionTimeoutSeconds=60))
    raw = _greeted(running)
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
    assert raw.command("RCPT TO:<u@contoso.com>")[0] == 250
    assert raw.command("DATA")[0] == 354
    raw.send(b"Subject: slow\r\n\r\n")
    return running, raw


def test_a_slow_but_steady_upload_is_not_idle(start: Any) -> None:
    running, raw = _slow_data(start)
    began = time.monotonic()
    while time.monotonic() - began < 2.5:  # well past the 1 s inactivity timeout
        time.sleep(0.3)
        raw.send(b"a line of the body\r\n")
    raw.send(b".\r\n")
    assert raw.reply()[0] == 250
    assert len(running.messages()) == 1


def test_a_sender_who_stops_mid_data_is_cut_off(start: Any) -> None:
    running, raw = _slow_data(start)
    raw.send(b"half a body\r\n")
    began = time.monotonic()
    assert raw.closed()  # Raw waits up to 10 s
    assert time.monotonic() - began < 3
    assert running.messages() == []
