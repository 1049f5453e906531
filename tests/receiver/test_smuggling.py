"""SMTP smuggling: DATA ends only at CRLF.CRLF, and no bare CR or LF gets through."""

from __future__ import annotations

from typing import Any

import pytest
from smtpgate.receiver import replies

from .helpers import Raw

SMUGGLED = (
    b"MAIL FROM:<admin@contoso.com>\r\n"
    b"RCPT TO:<victim@contoso.com>\r\n"
    b"DATA\r\n"
    b"Subject: smuggled\r\n\r\nsmuggled body\r\n"
)
SEQUENCES = [
    b"\n.\r\n",
    b"\r.\r\n",
    b"\n.\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
]


def _connector() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("Internet", {"usage": "Internet", "bindings": ["0.0.0.0:25"], "tarpitIntervalSeconds": 0})
    ]


@pytest.mark.parametrize("sequence", SEQUENCES, ids=repr)
def test_smuggled_end_of_data_never_yields_a_second_message(start: Any, sequence: bytes) -> None:
    running = start(_connector())
    raw = Raw(running.port(25))
    raw.reply()
    raw.command("EHLO attacker.example")
    raw.command("MAIL FROM:<someone@example.org>")
    raw.command("RCPT TO:<user@contoso.com>")
    assert raw.command("DATA")[0] == 354
    raw.send(b"Subject: first\r\n\r\nfirst body" + sequence + SMUGGLED + b".\r\n")
    code, _ = raw.reply()
    extra = []
    try:
        raw.send(b"QUIT\r\n")
        while True:
            extra.append(raw.reply()[0])
            if extra[-1] == 221:
                break
    except (ConnectionError, TimeoutError):
        pass
    messages = running.messages()
    assert len(messages) <= 1
    assert not any(b"Subject: smuggled" in m and b"Subject: first" not in m for m in messages)
    for message in messages:
        body = message.replace(b"\r\n", b"")
        assert b"\r" not in body and b"\n" not in body
    if messages:
        assert code == 250
    else:
        assert code in (replies.BARE_LINE_ENDING_DATA.code, replies.NUL_IN_DATA.code)
    assert extra == [221]


@pytest.mark.parametrize(
    "command", [b"NOOP\n", b"RSET\rMAIL FROM:<x@example.org>\r\n", b"EHLO a\rb\r\n"]
)
def test_bare_line_endings_in_commands_are_refused(start: Any, command: bytes) -> None:
    raw = Raw(start(_connector()).port(25))
    raw.reply()
    raw.command("EHLO client.example")
    raw.send(command + b"NOOP\r\n")
    assert raw.reply() == (500, replies.BARE_LINE_ENDING_COMMAND.line()[4:])


def test_pipelined_commands_after_a_clean_message_are_commands(start: Any) -> None:
    running = start(_connector())
    raw = Raw(running.port(25))
    raw.reply()
    raw.command("EHLO client.example")
    raw.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@contoso.com>\r\nDATA\r\n")
    assert [raw.reply()[0] for _ in range(3)] == [250, 250, 354]
    raw.send(b"Subject: one\r\n\r\n..leading dot\r\n.\r\n" + SMUGGLED + b".\r\n")
    assert [raw.reply()[0] for _ in range(5)] == [250, 250, 250, 354, 250]
    messages = running.messages()
    assert len(messages) == 2
    assert b"\r\n.leading dot\r\n" in messages[0] or b"\r\n.leading dot\r\n" in messages[1]
