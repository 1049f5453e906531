"""Mail addresses as the relay check sees them: domain, and whether the address tries to
route somewhere else than its domain (``%``-hack, ``!`` paths, quoted tricks, IP literals)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from smtpgate.connectors.config import AcceptedDomain
from smtpgate.connectors.enums import AcceptedDomainType

_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_ROUTING = set('%!@:"\\[]<>,;')
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"[ \t]*<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+(.*))?"
)


@dataclass(frozen=True)
class Address:
    """A parsed address. ``plain`` is False when the local part carries routing characters."""

    local: str
    domain: str
    literal: bool
    plain: bool

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


@functools.lru_cache(maxsize=1024)
def parse(text: str) -> Address | None:
    """Parse ``local@domain`` (angle brackets and a source route already removed).

    None for anything that is not an address with a domain. Remembered for the
    last 1,024 texts: senders and recipients repeat."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if ":" in text and text.startswith("@"):
        text = text.rsplit(":", 1)[1]  # a source route: only the final address counts
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain:
        return None
    if _SPACE_OR_CONTROL.search(domain) is not None:
        return None
    domain = domain.lower()
    literal = domain.startswith("[") and domain.endswith("]")
    if domain.endswith("."):
        domain = domain[:-1]
    if not literal and not _DOMAIN.match(domain):
        return None
    plain = not (set(local) & _ROUTING) and not local.startswith(".")
    return Address(local=local, domain=domain, literal=literal, plain=plain)


def simple_path(arg: str) -> tuple[str, str] | None:
    """``(address, parameters)`` for the everyday MAIL/RCPT argument ``<dot-atom@domain>``
    followed by nothing or by whitespace and parameters; None for anything else (quoted
    local parts, source routes, comments, literals, the null path), which the full RFC 5322
    parser reads instead."""
    match = _SIMPLE_PATH.fullmatch(arg)
    if match is None or (match[2] or "").startswith("("):
        return None
    return match[1], match[2] or ""


def accepted_domain(domain: str, domains: Iterable[AcceptedDomain]) -> AcceptedDomain | None:
    """The accepted domain ``domain`` falls in: exact, or under a ``*.`` wildcard."""
    best: AcceptedDomain | None = None
    for candidate in domains:
        pattern = candidate.domain
        if pattern == domain:
            return candidate
        if (
            pattern.startswith("*.")
            and (domain == pattern[2:] or domain.endswith("." + pattern[2:]))
            and (best is None or len(pattern) > len(best.domain))
        ):
            best = candidate
    return best


def is_authoritative(domain: str, domains: Iterable[AcceptedDomain]) -> bool:
    found = accepted_domain(domain, domains)
    return found is not None and found.domain_type is AcceptedDomainType.Authoritative
