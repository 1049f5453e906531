"""The PROXY protocol: the parser's bounds, and a receiver behind a trusted proxy driven
byte for byte over raw sockets (HAProxy in front is in test_proxy_haproxy.py)."""

from __future__ import annotations

import csv
import ipaddress
import pathlib
import socket
import struct
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from smtpgate.receiver import proxy, replies
from smtpgate.receiver.protocol_log import ProtocolLog

from .helpers import Raw, expected, ranged_connector

# -- building headers ------------------------------------------------------------------


def v1(source: str, destination: str = "192.0.2.25", ports: tuple[int, int] = (40000, 25)) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {destination} {ports[0]} {ports[1]}\r\n".encode()


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def v2(
    source: str | None = None,
    destination: str = "192.0.2.25",
    ports: tuple[int, int] = (40000, 25),
    *,
    command: int = 1,
    kind: int | None = None,
    tlvs: bytes = b"",
    block: bytes | None = None,
) -> bytes:
    """A v2 header: PROXY from ``source`` (TCP4 or TCP6 by its form), or LOCAL
    (``command=0``) with no addresses; ``block`` replaces the address block."""
    if block is None:
        if source is None:
            block, kind = b"", 0x00 if kind is None else kind
        else:
            src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
            block = src.packed + dst.packed + struct.pack("!HH", *ports)
            kind = (0x11 if src.version == 4 else 0x21) if kind is None else kind
    payload = block + tlvs
    return (
        proxy.V2_SIGNATURE
        + bytes([0x20 | command, kind or 0])
        + struct.pack("!H", len(payload))
        + payload
    )


AWS_VPCE = tlv(0xEA, b"\x01vpce-0123456789abcdef0")  # what an AWS NLB adds
UNIQUE_ID = tlv(0x05, b"x" * 40)
UNIX_BLOCK = b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")


# -- the parser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "family", "source", "destination"),
    [
        (v1("198.51.100.7"), "TCP4", ("198.51.100.7", 40000), ("192.0.2.25", 25)),
        (v1("2001:db8::7", "2001:db8::25"), "TCP6", ("2001:db8::7", 40000), ("2001:db8::25", 25)),
        (v1("198.51.100.7", ports=(0, 65535)), "TCP4", ("198.51.100.7", 0), ("192.0.2.25", 65535)),
        (v2("198.51.100.7"), "TCP4", ("198.51.100.7", 40000), ("192.0.2.25", 25)),
        (
            v2("2001:db8::7", "2001:db8::25", tlvs=AWS_VPCE + UNIQUE_ID),
            "TCP6",
            ("2001:db8::7", 40000),
            ("2001:db8::25", 25),
        ),
        (v2("198.51.100.7", tlvs=AWS_VPCE), "TCP4", ("198.51.100.7", 40000), ("192.0.2.25", 25)),
        # An IPv4-mapped source is the IPv4 address it carries.
        (v1("::ffff:198.51.100.7", "2001:db8::25"), "TCP6", ("198.51.100.7", 40000), None),
    ],
)
def test_headers_name_the_client(
    header: bytes, family: str, source: tuple[str, int], destination: tuple[str, int] | None
) -> None:
    parsed = proxy.parse(header + b"EHLO after\r\n")
    assert parsed is not None
    assert (parsed.family, parsed.length) == (family, len(header))
    assert parsed.source is not None and parsed.destination is not None
    assert (str(parsed.source[0]), parsed.source[1]) == source
    if destination is not None:
        assert (str(parsed.destination[0]), parsed.destination[1]) == destination


@pytest.mark.parametrize(
    ("header", "command", "family"),
    [
        (v2(command=0), "LOCAL", "UNSPEC"),  # HAProxy's health checks
        (v2("198.51.100.7", command=0, tlvs=AWS_VPCE), "LOCAL", "UNSPEC"),  # block ignored
        (v2(kind=0x00), "PROXY", "UNSPEC"),
        (v2(block=UNIX_BLOCK, kind=0x31), "PROXY", "UNIX"),
        (b"PROXY UNKNOWN\r\n", "PROXY", "UNKNOWN"),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", "PROXY", "UNKNOWN"),
    ],
)
def test_local_and_addressless_headers_keep_the_connections_own_addresses(
    header: bytes, command: str, family: str
) -> None:
    parsed = proxy.parse(header)
    assert parsed is not None
    assert (parsed.command, parsed.family, parsed.source, parsed.length) == (
        command,
        family,
        None,
        len(header),
    )


@pytest.mark.parametrize(
    "header",
    [
        v1("198.51.100.7"),
        v1("2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:7", (65535, 65535)),
        v2("198.51.100.7", tlvs=AWS_VPCE),
        v2(command=0),
    ],
)
def test_every_cut_short_header_asks_for_more(header: bytes) -> None:
    for end in range(len(header)):
        assert proxy.parse(header[:end]) is None or end < 6, end
        assert proxy.start(header[:end]) is not proxy.Start.OTHER
    assert proxy.parse(header) is not None


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 198.51.100.7 192.0.2.25 40000 25\n",  # bare LF
        b"PROXY TCP4 198.51.100.7 192.0.2.25 40000\r\n",  # a field missing
        b"PROXY TCP4 198.51.100.7 192.0.2.25 40000 25 x\r\n",  # one too many
        b"PROXY TCP4  198.51.100.7 192.0.2.25 40000 25\r\n",  # two spaces
        b"PROXY TCP14 198.51.100.7 192.0.2.25 40000 25\r\n",
        b"PROXY UDP4 198.51.100.7 192.0.2.25 40000 25\r\n",
        b"PROXY TCP4 2001:db8::7 192.0.2.25 40000 25\r\n",  # family and address differ
        b"PROXY TCP6 198.51.100.7 2001:db8::25 40000 25\r\n",
        b"PROXY TCP4 198.51.100.07 192.0.2.25 40000 25\r\n",  # leading zero
        b"PROXY TCP4 198.51.100.256 192.0.2.25 40000 25\r\n",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::25 40000 25\r\n",  # a zone
        b"PROXY TCP4 198.51.100.7 192.0.2.25 040000 25\r\n",
        b"PROXY TCP4 198.51.100.7 192.0.2.25 65536 25\r\n",
        b"PROXY TCP4 198.51.100.7 192.0.2.25 8_0 25\r\n",
        b"PROXY TCP4 198.51.100.7 192.0.2.25 +80 25\r\n",
        b"PROXY TCP4 198.51.100.7 192.0.2.25 -1 25\r\n",
        b"PROXY TCP4 198.51.100.7 192.0.2.25 40000 25 \r\n",
        b"PROXY tcp4 198.51.100.7 192.0.2.25 40000 25\r\n",
        b"PROXY " + b"A" * 101,  # 107 octets and no CRLF yet: refused at once
        b"PROXY UNKNOWN" + b" " * 93 + b"\r\n",  # 108 with the CRLF
        v2("198.51.100.7")[:12] + b"\x11" + v2("198.51.100.7")[13:],  # version 1 in v2
        v2("198.51.100.7")[:12] + b"\x22" + v2("198.51.100.7")[13:],  # command 2
        v2("198.51.100.7", kind=0x12),  # UDP over IPv4
        v2("2001:db8::7", "2001:db8::25", kind=0x22),  # UDP over IPv6
        v2("198.51.100.7", kind=0x41),  # no such family
        v2(block=b"\0" * 11, kind=0x11),  # too short for two IPv4 addresses and ports
        v2(block=b"\0" * 35, kind=0x21),
        v2("198.51.100.7", tlvs=b"\x05\x00"),  # a TLV cut short
        v2("198.51.100.7", tlvs=tlv(0x05, b"abc")[:-1]),  # longer than its header
        proxy.V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", proxy.V2_MAX_LENGTH + 1),
        proxy.V2_SIGNATURE + b"\x21\x11\xff\xff",
    ],
)
def test_malformed_headers_are_refused(header: bytes) -> None:
    with pytest.raises(proxy.Refused) as refused:
        proxy.parse(header)
    assert refused.value.reason is proxy.Reason.malformed


def test_the_longest_v2_header_allowed_is_taken() -> None:
    addresses = 12
    filler = tlv(0x04, b"\0" * (proxy.V2_MAX_LENGTH - addresses - 3))  # NOOP
    header = v2("198.51.100.7", tlvs=filler)
    assert len(header) == proxy.V2_FIXED + proxy.V2_MAX_LENGTH
    parsed = proxy.parse(header)
    assert parsed is not None and parsed.length == len(header)


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b"PROXY TCP4", proxy.Start.HEADER),
        (proxy.V2_SIGNATURE, proxy.Start.HEADER),
        (b"PRO", proxy.Start.MAYBE),
        (b"\r\n\r\n\x00", proxy.Start.MAYBE),
        (b"EHLO x\r\n", proxy.Start.OTHER),
        (b"PROXYx", proxy.Start.OTHER),
        (b"\r\n\r\nQUIT", proxy.Start.OTHER),
    ],
)
def test_a_signature_is_told_from_the_first_octets(data: bytes, found: proxy.Start) -> None:
    assert proxy.start(data) is found


# -- a receiver behind a trusted proxy (127.0.0.1) ------------------------------------

TRUSTED = {"trustedProxyRanges": ["127.0.0.1/32"]}


def _connectors(**extra: Any) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("Partner", ranged_connector(["198.51.100.0/24", "2001:db8::/32"], "partner", **extra)),
        ("Loopback", ranged_connector(["127.0.0.0/8"], "loopback", **extra)),
        ("Others", ranged_connector(["0.0.0.0/0", "::/0"], "others", **extra)),
    ]


def _rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("smtpgate_proxy_rejected_total", {"reason": reason}) or 0.0


def _banner(raw: Raw) -> str:
    code, text = raw.reply()
    assert code == 220, text
    return text.rsplit(" ", 1)[-1]


def _log_rows(plog: ProtocolLog, log_file: pathlib.Path) -> list[list[str]]:
    plog.close()
    lines = log_file.read_text().splitlines()
    return list(csv.reader(line for line in lines if not line.startswith("#")))


@pytest.mark.parametrize(
    ("header", "banner"),
    [
        (v1("198.51.100.7"), "partner"),
        (v2("198.51.100.7", tlvs=AWS_VPCE + UNIQUE_ID), "partner"),
        (v1("2001:db8::7", "2001:db8::25"), "partner"),
        (v2("2001:db8::7", "2001:db8::25", tlvs=AWS_VPCE), "partner"),
        (v1("203.0.113.9"), "others"),
        (v2("203.0.113.9"), "others"),
        (v2(command=0), "loopback"),  # LOCAL: the proxy's own connection
        (b"PROXY UNKNOWN\r\n", "loopback"),
    ],
)
def test_the_client_a_header_names_chooses_the_connector(
    start: Any, header: bytes, banner: str
) -> None:
    running = start(_connectors(), exposure=TRUSTED)
    raw = Raw(running.port(25))
    raw.send(header)
    assert _banner(raw) == banner
    assert raw.command("EHLO client.example")[0] == 250
    assert raw.command("QUIT")[0] == 221


def test_a_message_through_the_proxy_is_logged_and_received_from_the_client(
    start: Any, tmp_path: pathlib.Path
) -> None:
    log_file = tmp_path / "RECV.LOG"
    plog = ProtocolLog(str(log_file))
    running = start(_connectors(), exposure=TRUSTED, protocol_log=plog)
    raw = Raw(running.port(25))
    raw.send(v2("198.51.100.7", ports=(41234, 25), tlvs=AWS_VPCE))
    assert _banner(raw) == "partner"
    raw.command("EHLO client.example")
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
    assert raw.command("RCPT TO:<u@contoso.com>")[0] == 250
    assert raw.command("DATA")[0] == 354
    raw.send(b"Subject: proxied\r\n\r\nbody\r\n.\r\n")
    assert raw.reply()[0] == 250
    raw.command("QUIT")
    (message,) = running.messages()
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    assert "Received: from client.example ([198.51.100.7])\r\n" in head
    assert "\t(via PROXY protocol from [127.0.0.1])\r\n" in head
    running.stop()
    rows = _log_rows(plog, log_file)
    assert {row[1] for row in rows} == {"Partner"}
    assert {row[5] for row in rows} == {"198.51.100.7:41234"}
    notes = [row[8] for row in rows if row[6] == "*"]
    assert any(
        n.startswith("PROXY v2 TCP4 via 127.0.0.1:") and "client dialled 192.0.2.25:25" in n
        for n in notes
    )


def test_limits_are_counted_per_client_behind_the_proxy(start: Any) -> None:
    running = start(_connectors(maxInboundConnectionPerSource=2), exposure=TRUSTED)
    held = []
    for _ in range(2):
        raw = Raw(running.port(25))
        raw.send(v1("198.51.100.7"))
        assert _banner(raw) == "partner"
        held.append(raw)
    third = Raw(running.port(25))
    third.send(v1("198.51.100.7"))
    assert third.reply() == expected(replies.TOO_MANY_FROM_SOURCE)
    # Another client through the same proxy is counted as itself.
    other = Raw(running.port(25))
    other.send(v1("198.51.100.8"))
    assert _banner(other) == "partner"


def test_a_header_from_an_untrusted_peer_closes_without_a_banner(start: Any) -> None:
    running = start(_connectors(), exposure=TRUSTED)
    before = _rejected("untrusted")
    for header in (v1("198.51.100.7"), v2("198.51.100.7")):
        # The receiver is busy for a moment: the header is there before it greets.
        running.loop.call_soon_threadsafe(time.sleep, 0.1)
        raw = Raw(running.port(25), source="127.0.0.2")
        raw.send(header)
        assert raw.replies_until_closed() == []
    # One that sends a v1 header only after the banner is closed without a reply too.
    late = Raw(running.port(25), source="127.0.0.2")
    assert _banner(late) == "loopback"
    late.send(v1("198.51.100.7"))
    assert late.replies_until_closed() == []
    assert _rejected("untrusted") == before + 3
    # The untrusted peer without a header is served as itself.
    assert _banner(Raw(running.port(25), source="127.0.0.2")) == "loopback"


def test_a_header_is_untrusted_when_the_mode_is_off(start: Any) -> None:
    running = start(_connectors(), exposure={**TRUSTED, "proxyProtocol": "Off"})
    before = _rejected("untrusted")
    running.loop.call_soon_threadsafe(time.sleep, 0.1)
    raw = Raw(running.port(25))
    raw.send(v1("198.51.100.7"))
    assert raw.replies_until_closed() == []
    assert _rejected("untrusted") == before + 1
    assert _banner(Raw(running.port(25))) == "loopback"


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (b"PROXY TCP4 198.51.100.7 192.0.2.25 40000 25\n", "malformed"),
        (b"PROXY TCP4 198.51.100.7 192.0.2.25 99999 25\r\n", "malformed"),
        (b"PROXY " + b"x" * 200, "malformed"),
        (v2("198.51.100.7", kind=0x12), "malformed"),
        (proxy.V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\0" * 100, "malformed"),
        (b"EHLO client.example\r\n", "missing"),
        (b"\r\n\r\nQUIT\r\n", "missing"),
    ],
)
def test_bad_or_missing_headers_close_without_a_banner(
    start: Any, sent: bytes, reason: str
) -> None:
    running = start(_connectors(), exposure=TRUSTED)
    before = _rejected(reason)
    raw = Raw(running.port(25))
    raw.send(sent)
    assert raw.replies_until_closed() == []
    assert _rejected(reason) == before + 1


@pytest.mark.parametrize("header", [v1("198.51.100.7"), v2("198.51.100.7", tlvs=AWS_VPCE)])
def test_a_header_cut_short_is_truncated(start: Any, header: bytes) -> None:
    running = start(_connectors(), exposure=TRUSTED)
    before = _rejected("truncated")
    raw = Raw(running.port(25))
    raw.send(header[: len(header) // 2])
    raw.sock.shutdown(socket.SHUT_WR)
    assert raw.replies_until_closed() == []
    deadline = time.monotonic() + 5
    while _rejected("truncated") != before + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _rejected("truncated") == before + 1


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 198.51"])
def test_no_complete_header_within_the_timeout_closes_without_a_banner(
    start: Any, sent: bytes
) -> None:
    running = start(_connectors(), exposure=TRUSTED, proxy_timeout=0.5)
    before = _rejected("timeout")
    raw = Raw(running.port(25))
    raw.send(sent)
    began = time.monotonic()
    assert raw.replies_until_closed() == []
    assert 0.4 < time.monotonic() - began < 3
    assert _rejected("timeout") == before + 1


def test_optional_mode_serves_a_trusted_peer_with_or_without_a_header(start: Any) -> None:
    running = start(
        _connectors(),
        exposure={**TRUSTED, "proxyProtocol": "Optional"},
        proxy_optional_wait=0.2,
    )
    raw = Raw(running.port(25))
    raw.send(v2("198.51.100.7"))
    assert _banner(raw) == "partner"
    began = time.monotonic()
    plain = Raw(running.port(25))
    assert _banner(plain) == "loopback"
    waited = time.monotonic() - began
    assert 0.15 < waited < 1.5  # the short wait for a header that did not come
    # An untrusted peer is not kept waiting.
    began = time.monotonic()
    assert _banner(Raw(running.port(25), source="127.0.0.2")) == "loopback"
    assert time.monotonic() - began < 0.15
    # A header that has begun gets the whole header timeout.
    slow = Raw(running.port(25))
    header = v1("198.51.100.7")
    slow.send(header[:4])
    time.sleep(0.4)
    slow.send(header[4:])
    assert _banner(slow) == "partner"


def test_commands_behind_the_header_are_still_caught_before_the_greeting(start: Any) -> None:
    running = start(_connectors(), exposure=TRUSTED)
    raw = Raw(running.port(25))
    raw.send(v1("198.51.100.7") + b"EHLO early.example\r\n")
    assert raw.replies_until_closed() == [expected(replies.PREGREET)]
    # Only the header before the greeting is not "speaking first".
    fine = Raw(running.port(25))
    fine.send(v1("198.51.100.7"))
    assert _banner(fine) == "partner"


def test_a_trusted_peer_that_connects_and_leaves_is_not_counted(start: Any) -> None:
    running = start(_connectors(), exposure=TRUSTED)
    before = {r: _rejected(r) for r in proxy.Reason}
    raw = Raw(running.port(25))
    raw.sock.shutdown(socket.SHUT_WR)
    assert raw.replies_until_closed() == []
    time.sleep(0.1)
    assert {r: _rejected(r) for r in proxy.Reason} == before
