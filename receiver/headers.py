"""The header firewall and the trace headers, on a message's header section alone.

Trust header: the receiver removes every incoming ``X-Smtpgate-`` header and adds
``X-Smtpgate-Submission: connector=<name>; principal=<...>; authenticated=<yes|no>;
anti-spam=<bypass|apply>``, so the next hop can trust it when the message comes from this
server and from nowhere else. ``authenticated=yes`` stands for
ms-Exch-SMTP-Accept-Authentication-Flag, ``anti-spam=bypass`` for ms-Exch-Bypass-Anti-Spam."""

from __future__ import annotations

import email.utils
import functools
import time

from smtpgate.connectors.enums import Permission as P

TRUST_PREFIX = b"x-smtpgate-"


class HeaderReader:
    """A message's header section, fed in whole lines as they arrive: the fields (each
    with its folded lines) kept while the section is within ``limit`` octets, and past
    that only counted (``size``, ``hops``: the Received fields). It ends at the first
    empty line, or at a line that is not a header line (no blank line before the body)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.fields: list[bytes] = []
        self.size = 0
        self.hops = 0
        self.done = False
        self._count = 0  # fields seen, kept or not

    def feed(self, lines: bytes) -> bytes | None:
        """The body's first octets once the header section ends here, else None."""
        position, length = 0, len(lines)
        while position < length:
            end = lines.find(b"\r\n", position)
            end = length if end < 0 else end + 2
            line = lines[position:end]
            if line == b"\r\n":
                self.done = True
                return lines[end:]
            continued = line[:1] in (b" ", b"\t") and self._count
            if not continued and b":" not in line:
                self.done = True  # the header section ended without a blank line
                return lines[position:]
            self.size += len(line)
            kept = self.limit is None or self.size <= self.limit
            if continued:
                if kept and len(self.fields) == self._count:
                    self.fields[-1] += line
            else:
                self._count += 1
                if _name(line) == b"received":
                    self.hops += 1
                if kept:
                    self.fields.append(line)
            position = end
        return None


def _name(header_field: bytes) -> bytes:
    return header_field.split(b":", 1)[0].strip().lower()


@functools.lru_cache(maxsize=256)
def forbidden_prefixes(held: frozenset[P]) -> tuple[bytes, ...]:
    """The header names (prefixes) a session holding ``held`` may not send (worked out
    once per set of rights: a connector's sessions hold a few)."""
    prefixes: list[bytes] = [TRUST_PREFIX]
    if P.AcceptHeadersRouting not in held:
        prefixes += [b"received", b"resent-"]
    if P.AcceptHeadersOrganization not in held:
        prefixes.append(b"x-ms-exchange-organization-")
    if P.AcceptHeadersForest not in held:
        prefixes.append(b"x-ms-exchange-forest-")
    return tuple(prefixes)


def firewall(fields: list[bytes], rights: frozenset[P]) -> list[bytes]:
    """The fields the session's rights let through ("received" is a whole name, the
    others are prefixes)."""
    forbidden = forbidden_prefixes(rights)
    whole = b"received" in forbidden
    prefixes = tuple(p for p in forbidden if p != b"received")
    kept = []
    for header_field in fields:
        name = _name(header_field)
        if not name.startswith(prefixes) and not (whole and name == b"received"):
            kept.append(header_field)
    return kept


_DATE: list[tuple[int, str]] = [(0, "")]


def _date() -> str:
    """The RFC 5322 date of this second, made once a second rather than per message."""
    second = int(time.time())
    made, text = _DATE[0]
    if made != second:
        text = email.utils.formatdate(second, localtime=False)
        _DATE[0] = (second, text)
    return text


def trace(
    *,
    helo: str | None,
    remote: str,
    via: str | None = None,
    fqdn: str,
    connector: str,
    principal: str,
    tls: bool,
    authenticated: bool,
    rights: frozenset[P],
    queue_id: str,
) -> list[bytes]:
    """The Received header and the trust header for an accepted message."""
    held = rights
    protocol = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
    date = _date()
    received = (
        f"Received: from {helo or 'unknown'} ([{remote}])\r\n"
        + (f"\t(via PROXY protocol from [{via}])\r\n" if via else "")
        + f"\tby {fqdn} (smtpgate) with {protocol} id {queue_id}\r\n"
        f'\tvia connector "{connector}"; {date}\r\n'
    )
    flag = "yes" if authenticated or P.AcceptAuthenticationFlag in held else "no"
    spam = "bypass" if P.BypassAntiSpam in held else "apply"
    submission = (
        f'X-Smtpgate-Submission: connector="{connector}"; principal="{principal}";\r\n'
        f"\tauthenticated={flag}; anti-spam={spam}\r\n"
    )
    return [received.encode(), submission.encode()]
