"""Remote IP ranges: parsing, normal form, containment, clashes between connectors' ranges
and the most-specific match."""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
K = TypeVar("K")


@dataclass(frozen=True, order=True)
class IPRange:
    """An inclusive range of addresses of one family, ``first`` to ``last`` as integers."""

    version: int
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def contains(self, address: IPAddress) -> bool:
        address = unmap(address)
        return address.version == self.version and self.first <= int(address) <= self.last

    def covers(self, other: IPRange) -> bool:
        """True when every address of ``other`` is in this range."""
        return (
            self.version == other.version and self.first <= other.first and other.last <= self.last
        )

    def overlaps(self, other: IPRange) -> bool:
        return (
            self.version == other.version and self.first <= other.last and other.first <= self.last
        )

    def nested_or_disjoint(self, other: IPRange) -> bool:
        """Exchange's rule for two ranges on one binding: one contains the other, or none
        of their addresses is shared."""
        return not self.overlaps(other) or self.covers(other) or other.covers(self)

    def __str__(self) -> str:
        first = _address(self.version, self.first)
        if self.size == 1:
            return str(first)
        span = self.size.bit_length() - 1
        if self.size == 1 << span and self.first % self.size == 0:
            bits = (32 if self.version == 4 else 128) - span
            return f"{first}/{bits}"
        return f"{first}-{_address(self.version, self.last)}"


def _address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def unmap(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) as the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress:
    """One address, IPv4 or IPv6, optionally in brackets; IPv4-mapped IPv6 is unmapped.
    (Remembered: a receiver parses every client's address, mostly the same few.)"""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return unmap(ipaddress.ip_address(text))


def parse(text: str) -> IPRange:
    """Parse a single address, an ``a-b`` range, or a CIDR block. Raises ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("an IP range may not be empty")
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError as err:
            raise ValueError(f"{text!r} is not a valid CIDR block: {err}") from None
        return IPRange(
            network.version, int(network.network_address), int(network.broadcast_address)
        )
    if "-" in text:
        low_text, _, high_text = text.partition("-")
        try:
            low, high = parse_address(low_text), parse_address(high_text)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid address range") from None
        if low.version != high.version:
            raise ValueError(f"{text!r} mixes IPv4 and IPv6")
        if int(low) > int(high):
            raise ValueError(f"{text!r} starts after it ends")
        return IPRange(low.version, int(low), int(high))
    try:
        address = parse_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid IP address, range or CIDR block") from None
    return IPRange(address.version, int(address), int(address))


ALL_IPV4 = parse("0.0.0.0-255.255.255.255")
ALL_IPV6 = parse("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")


def normalise(text: str) -> str:
    """The normal text of a range: single address, CIDR block where exact, else ``a-b``."""
    return str(parse(text))


def most_specific(
    candidates: Iterable[tuple[K, Sequence[IPRange]]], address: IPAddress
) -> K | None:
    """The key whose ranges hold the smallest range containing ``address``.

    Ties (which validation forbids on one binding) go to the earliest candidate.
    """
    best: K | None = None
    best_size: int | None = None
    for key, key_ranges in candidates:
        for candidate in key_ranges:
            if candidate.contains(address) and (best_size is None or candidate.size < best_size):
                best, best_size = key, candidate.size
    return best


class Clash:
    """The ranges of one connector, sorted so that a range of another connector is checked
    against all of them in O(log n): does one of them equal it, or overlap it without one
    containing the other?

    Two ranges overlap partly when one starts strictly before the other and ends inside it
    (from the other's start to just before its end): ``e`` partly overlaps ``q`` when
    ``e.first < q.first <= e.last < q.last`` or ``q.first < e.first <= q.last < e.last``.
    The first case is a question about the ranges ending in ``[q.first, q.last)`` (sorted by
    end: is the smallest start among them before ``q.first``?), the second about the ranges
    starting in ``(q.first, q.last]`` (sorted by start: is the largest end after ``q.last``?);
    sparse tables answer each minimum and maximum in constant time.
    """

    def __init__(self, ranges: Sequence[IPRange]) -> None:
        self.ranges = tuple(ranges)
        self._same = frozenset(self.ranges)
        self._families: dict[int, _Family] = {}
        for version in {r.version for r in self.ranges}:
            self._families[version] = _Family([r for r in self.ranges if r.version == version])

    def clashes(self, query: IPRange) -> bool:
        """True when ``query`` equals one of the ranges or overlaps one without nesting."""
        if query in self._same:
            return True
        family = self._families.get(query.version)
        return family is not None and family.partly_overlaps(query)

    def first_clash(self, query: IPRange) -> IPRange | None:
        """The earliest of the ranges that ``query`` clashes with (for messages)."""
        if not self.clashes(query):
            return None
        return next(r for r in self.ranges if r == query or not r.nested_or_disjoint(query))


class _Family:
    """Sparse tables over one address family's ranges (see Clash)."""

    def __init__(self, ranges: list[IPRange]) -> None:
        by_first = sorted(ranges, key=lambda r: r.first)
        self.firsts = [r.first for r in by_first]
        self.max_last = _Sparse([r.last for r in by_first], max)
        by_last = sorted(ranges, key=lambda r: r.last)
        self.lasts = [r.last for r in by_last]
        self.min_first = _Sparse([r.first for r in by_last], min)

    def partly_overlaps(self, q: IPRange) -> bool:
        # Ranges ending in [q.first, q.last) that start before q.first.
        low, high = bisect.bisect_left(self.lasts, q.first), bisect.bisect_left(self.lasts, q.last)
        if low < high and self.min_first.query(low, high) < q.first:
            return True
        # Ranges starting in (q.first, q.last] that end after q.last.
        low = bisect.bisect_right(self.firsts, q.first)
        high = bisect.bisect_right(self.firsts, q.last)
        return low < high and self.max_last.query(low, high) > q.last


class _Sparse:
    """Minimum or maximum of any slice ``values[low:high]`` in O(1), after O(n log n)."""

    def __init__(self, values: list[int], pick: Callable[[int, int], int]) -> None:
        self.pick = pick
        self.levels = [values]
        width = 1
        while 2 * width <= len(values):
            below = self.levels[-1]
            self.levels.append(
                [pick(below[i], below[i + width]) for i in range(len(below) - width)]
            )
            width *= 2

    def query(self, low: int, high: int) -> int:
        level = (high - low).bit_length() - 1
        row = self.levels[level]
        return self.pick(row[low], row[high - (1 << level)])
