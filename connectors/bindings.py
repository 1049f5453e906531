"""Local bindings: the (IP address, TCP port) pairs a connector listens on."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from . import ranges


@dataclass(frozen=True, order=True)
class Binding:
    """One local address and port. ``0.0.0.0`` and ``::`` mean all addresses of the family."""

    version: int
    address: str
    port: int

    @functools.cached_property
    def ip(self) -> ranges.IPAddress:
        return ipaddress.ip_address(self.address)

    @functools.cached_property
    def all_addresses(self) -> bool:
        return self.ip.is_unspecified

    def overlaps(self, other: Binding) -> bool:
        """True when both listen for some same local address and port."""
        if self.port != other.port or self.version != other.version:
            return False
        return self.address == other.address or self.all_addresses or other.all_addresses

    def accepts(self, local: ranges.IPAddress, port: int) -> bool:
        """True when a connection to ``local``:``port`` arrives on this binding."""
        local = ranges.unmap(local)
        if port != self.port or local.version != self.version:
            return False
        return self.all_addresses or local == self.ip

    def __str__(self) -> str:
        if self.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


def parse(text: str) -> Binding:
    """Parse ``0.0.0.0:25``, ``10.1.2.3:2525``, ``[::]:25`` or ``[2001:db8::1]:587``."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} must look like [IPv6 address]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{text!r} must look like IPv4:port or [IPv6]:port")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} in binding {text!r} is not an IP address") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} in binding {text!r} must be 1 to 65535")
    return Binding(address.version, str(address), int(port_text))


def normalise(text: str) -> str:
    return str(parse(text))
