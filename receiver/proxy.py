"""The PROXY protocol (HAProxy's proxy-protocol.txt, v1 text and v2 binary) that a trusted
load balancer sends before the SMTP banner: a pure parser with hard bounds, and the reader
that takes a header off the front of a connection.

Written here rather than taken from a package: aiosmtpd's own parser and the
``proxy-protocol`` package both read a v1 line up to the stream's limit before checking
its 107 octets, take any token ending in ``4`` as ``TCP4`` or ports like ``8_0``, accept UDP
for a stream, and put no limit on v2's length field.

Bounds: a v1 header is at most 107 octets with its CRLF and is refused as soon as 107
octets arrive without one; a v2 header's length field may say at most ``V2_MAX_LENGTH``.
v2's LOCAL command (health checks) and the families UNSPEC and UNIX keep the connection's
own addresses; TLVs are walked to check that they fit and are otherwise skipped (CRC32C is
not verified). Nothing after the header is consumed."""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
from dataclasses import dataclass

from smtpgate.connectors.ranges import IPAddress, unmap

V1_PREFIX = b"PROXY "
V1_MAX = 107  # octets with the CRLF (proxy-protocol.txt 2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family and protocol, length
V2_MAX_LENGTH = 2048  # addresses (216 for UNIX) and TLVs: room for every TLV seen in use
READ_SIZE = V2_FIXED + V2_MAX_LENGTH

_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_ADDRESS = {b"TCP4": re.compile(rb"[0-9.]{7,15}"), b"TCP6": re.compile(rb"[0-9a-fA-F:.]{2,45}")}
# v2 family and protocol byte: address octets to read (TCP over IPv4, IPv6, UNIX stream).
_V2_ADDRESSES = {0x11: 12, 0x21: 36, 0x31: 216}


class Reason(enum.StrEnum):
    """Why a connection was closed before its banner (``smtpgate_proxy_rejected_total``)."""

    untrusted = "untrusted"  # a header from a peer outside trustedProxyRanges
    malformed = "malformed"  # not a header by the specification, or over its bounds
    truncated = "truncated"  # the peer closed in the middle of a header
    missing = "missing"  # Required, and the peer sent something else first
    timeout = "timeout"  # no complete header within the header timeout


class Refused(Exception):
    """A header (or its absence) that closes the connection; ``reason`` for the metric."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """A parsed header. ``source`` and ``destination`` are None where the connection's own
    addresses stand: v2 LOCAL, v1 UNKNOWN, v2 UNSPEC or UNIX."""

    version: int
    command: str  # PROXY or LOCAL
    family: str  # TCP4, TCP6, UNKNOWN (v1); UNSPEC, UNIX (v2)
    source: tuple[IPAddress, int] | None
    destination: tuple[IPAddress, int] | None
    length: int  # octets the header took


class Start(enum.Enum):
    """What the first octets of a connection are."""

    HEADER = "header"  # a v1 or v2 signature
    MAYBE = "maybe"  # too few octets yet to tell
    OTHER = "other"  # not a PROXY header


def start(data: bytes | bytearray) -> Start:
    if data[:6] == V1_PREFIX or data[:12] == V2_SIGNATURE:
        return Start.HEADER
    if V1_PREFIX.startswith(data) or V2_SIGNATURE.startswith(data):
        return Start.MAYBE
    return Start.OTHER


def parse(data: bytes | bytearray) -> Header | None:
    """The header at the start of ``data`` (which starts with a signature), or None while
    more octets are needed. Raises ``Refused`` (malformed)."""
    if data[:6] == V1_PREFIX:
        return _v1(bytes(data[:V1_MAX]))
    return _v2(data)


def _malformed(detail: str) -> Refused:
    return Refused(Reason.malformed, detail)


def _v1(data: bytes) -> Header | None:
    end = data.find(b"\r\n")
    if end < 0:
        if b"\n" in data:
            raise _malformed("v1 header with a bare LF")
        if len(data) >= V1_MAX:
            raise _malformed(f"v1 header longer than {V1_MAX} octets")
        return None
    length = end + 2
    parts = data[6:end].split(b" ")
    if parts[0] == b"UNKNOWN":  # the rest of the line is to be ignored (2.1)
        return Header(1, "PROXY", "UNKNOWN", None, None, length)
    if len(parts) != 5 or parts[0] not in _V1_ADDRESS:
        raise _malformed("v1 header is not TCP4, TCP6 or UNKNOWN with four fields")
    family, source, destination, source_port, destination_port = parts
    pattern = _V1_ADDRESS[family]
    kind = ipaddress.IPv4Address if family == b"TCP4" else ipaddress.IPv6Address
    addresses = []
    for text in (source, destination):
        if pattern.fullmatch(text) is None:
            raise _malformed(f"v1 {family.decode()} address is malformed")
        try:
            addresses.append(kind(text.decode("ascii")))
        except ValueError:
            raise _malformed(f"v1 {family.decode()} address is malformed") from None
    ports = []
    for text in (source_port, destination_port):
        if _V1_PORT.fullmatch(text) is None or int(text) > 65535:
            raise _malformed("v1 port is malformed")
        ports.append(int(text))
    return Header(
        1,
        "PROXY",
        family.decode(),
        (unmap(addresses[0]), ports[0]),
        (unmap(addresses[1]), ports[1]),
        length,
    )


def _v2(data: bytes | bytearray) -> Header | None:
    if len(data) < V2_FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise _malformed(f"v2 header with version {version}")
    if command > 1:
        raise _malformed(f"v2 header with command {command}")
    size = int.from_bytes(data[14:16], "big")
    if size > V2_MAX_LENGTH:
        raise _malformed(f"v2 header of {size} octets (at most {V2_MAX_LENGTH})")
    total = V2_FIXED + size
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the proxy's own connection (a health check); block ignored
        return Header(2, "LOCAL", "UNSPEC", None, None, total)
    kind = data[13]
    if kind == 0x00:
        return Header(2, "PROXY", "UNSPEC", None, None, total)
    octets = _V2_ADDRESSES.get(kind)
    if octets is None:
        raise _malformed(f"v2 header with family and protocol 0x{kind:02x} (not TCP or UNIX)")
    if size < octets:
        raise _malformed(f"v2 header too short for its addresses ({size} < {octets})")
    block = bytes(data[V2_FIXED:total])
    _tlvs(block[octets:])
    if kind == 0x31:
        return Header(2, "PROXY", "UNIX", None, None, total)
    half = (octets - 4) // 2
    factory = ipaddress.IPv4Address if kind == 0x11 else ipaddress.IPv6Address
    source = unmap(factory(block[:half]))
    destination = unmap(factory(block[half : 2 * half]))
    source_port = int.from_bytes(block[2 * half : 2 * half + 2], "big")
    destination_port = int.from_bytes(block[2 * half + 2 : octets], "big")
    family = "TCP4" if kind == 0x11 else "TCP6"
    return Header(2, "PROXY", family, (source, source_port), (destination, destination_port), total)


def _tlvs(block: bytes) -> None:
    """Check that the TLVs fill the rest of the block exactly; their values are skipped."""
    position = 0
    while position < len(block):
        if position + 3 > len(block):
            raise _malformed("v2 TLV cut short")
        position += 3 + int.from_bytes(block[position + 1 : position + 3], "big")
        if position > len(block):
            raise _malformed("v2 TLV longer than its header")


async def read(
    reader: asyncio.StreamReader, *, required: bool, timeout: float, optional_wait: float
) -> Header | None:
    """Take a header off the front of ``reader``. None: no header (Optional mode: nothing
    came within ``optional_wait``, the peer closed without a word, or its first octets are
    not a signature, which are left in the reader). Raises ``Refused``. Octets after the
    header are left in the reader too."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    data = bytearray()
    while True:
        found = start(data) if data else Start.MAYBE
        if found is Start.OTHER:
            _give_back(reader, data)
            if required:
                raise Refused(Reason.missing, "no PROXY header before the client spoke")
            return None
        if found is Start.HEADER:
            header = parse(data)
            if header is not None:
                _give_back(reader, data[header.length :])
                return header
        waiting = deadline - loop.time()
        if not data and not required:
            waiting = min(optional_wait, waiting)
        try:
            async with asyncio.timeout(max(waiting, 0)):
                chunk = await reader.read(READ_SIZE - len(data))
        except TimeoutError:
            if not data and not required:
                return None
            raise Refused(Reason.timeout, f"no complete PROXY header within {timeout:g}s") from None
        if not chunk:
            if not data:
                return None  # connected and left (a TCP health check): nothing to refuse
            raise Refused(Reason.truncated, f"closed after {len(data)} octets of a PROXY header")
        data += chunk


def _give_back(reader: asyncio.StreamReader, octets: bytes | bytearray) -> None:
    """Put octets read past the header back in front of the reader's buffer."""
    if octets:
        reader._buffer[0:0] = octets  # type: ignore[attr-defined]
