"""Messages bigger than what a session keeps in memory: spilled to a file as they arrive,
and still refused whole, firewalled, stored or relayed byte for byte."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from smtpgate.receiver import replies, spill

from .helpers import Raw, custom_connector, expected
from .test_delivery import NextHop, relaying  # noqa: F401 - the fixture

MIB = 1 << 20
LINE = b"y" * 70 + b"\r\n"


def _body(size: int) -> bytes:
    """``size`` octets or so of lines, some starting with a dot, one of them where the
    relay reads its file in blocks."""
    lines = LINE * (size // len(LINE))
    at = MIB - MIB % len(LINE)
    return b".first\r\n" + lines[:at] + b".at a block edge\r\n" + lines[at:] + b".\r\n.last\r\n"


def _wire(content: bytes) -> bytes:
    return b"".join(spill.stuffed([content])) + b".\r\n"


def _session(port: int, source: str = "127.0.0.1") -> Raw:
    raw = Raw(port, source=source)
    raw.reply()
    raw.command("EHLO client.example")
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
    assert raw.command("RCPT TO:<u@contoso.com>")[0] == 250
    assert raw.command("DATA")[0] == 354
    return raw


def _leftovers(running: Any) -> list[str]:
    """Files left in the spool's tmp/ once the spill threads are done."""
    folder = running.spool / "tmp"
    for _ in range(100):
        names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        if not names:
            break
        time.sleep(0.05)
    return names


@settings(deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_stuffing_in_chunks_is_stuffing_of_the_whole(tail: bytes, cuts: list[int]) -> None:
    content = b"." + tail.replace(b"\r", b"").replace(b"\n", b"\r\n.") + b"\r\n"
    points = [0, *sorted(c % (len(content) + 1) for c in cuts), len(content)]
    chunks = [content[a:b] for a, b in zip(points, points[1:], strict=False)]
    whole = b"." + content.replace(b"\r\n.", b"\r\n..")
    assert b"".join(spill.stuffed(chunks)) == whole


def test_a_big_message_is_stored_whole_and_firewalled(start: Any) -> None:
    running = start(custom_connector())
    content = b"X-Smtpgate-Submission: forged\r\nSubject: big\r\n\r\n" + _body(3 * MIB)
    raw = _session(running.port(25))
    raw.send(_wire(content))
    assert raw.reply()[0] == 250
    [stored] = running.messages()
    head, body = stored.split(b"\r\n\r\n", 1)
    assert b"forged" not in head and b"\r\nReceived: from client.example" in head
    assert head.endswith(b"\r\nSubject: big") and body == _body(3 * MIB)
    assert _leftovers(running) == []


def test_a_big_message_is_relayed_whole(relaying: Any) -> None:  # noqa: F811
    hop = NextHop()
    running = relaying(hop)
    content = b"Subject: big\r\n\r\n" + _body(3 * MIB)
    raw = _session(running.port(25), source="127.0.0.8")
    raw.send(_wire(content))
    assert raw.reply()[0] == 250
    [(_, recipients, relayed)] = hop.messages
    assert recipients == ["u@contoso.com"]
    assert relayed.split(b"\r\n\r\n", 1)[1] == _body(3 * MIB)


def test_a_bare_line_feed_after_the_spill_refuses_the_whole_message(start: Any) -> None:
    running = start(custom_connector())
    raw = _session(running.port(25))
    raw.send(_wire(b"Subject: late\r\n\r\n" + _body(2 * MIB) + b"smuggled\n.\r\n"))
    assert raw.reply() == expected(replies.BARE_LINE_ENDING_DATA)
    assert running.messages() == [] and _leftovers(running) == []


def test_a_client_gone_mid_message_leaves_no_file(start: Any) -> None:
    running = start(custom_connector())
    raw = _session(running.port(25))
    raw.send(b"Subject: gone\r\n\r\n" + LINE * (2 * MIB // len(LINE)))
    time.sleep(0.3)
    raw.close()
    time.sleep(0.3)
    assert running.messages() == [] and _leftovers(running) == []


def test_bypass_size_limit_takes_a_message_far_over_the_limit(start: Any) -> None:
    running = start(
        custom_connector(
            maxMessageSize=100_000,
            permissions=[
                {
                    "principal": "NT AUTHORITY\\ANONYMOUS LOGON",
                    "extendedRights": ["ms-Exch-Bypass-Message-Size-Limit"],
                    "access": "Allow",
                }
            ],
        )
    )
    raw = _session(running.port(25))
    raw.send(_wire(b"Subject: huge\r\n\r\n" + _body(8 * MIB)))
    assert raw.reply()[0] == 250
    [stored] = running.messages()
    assert stored.split(b"\r\n\r\n", 1)[1] == _body(8 * MIB)
