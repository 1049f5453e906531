"""The header firewall and the trace headers, on the raw bytes of a message.

Trust header: the receiver removes every incoming ``X-Smtpgate-`` header and adds
``X-Smtpgate-Submission: connector=<name>; principal=<...>; authenticated=<yes|no>;
anti-spam=<bypass|apply>``, so the next hop can trust it when the message comes from this
server and from nowhere else. ``authenticated=yes`` stands for
ms-Exch-SMTP-Accept-Authentication-Flag, ``anti-spam=bypass`` for ms-Exch-Bypass-Anti-Spam."""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from dataclasses import dataclass

from smtpgate.connectors.enums import Permission as P

TRUST_PREFIX = b"x-smtpgate-"


@dataclass(frozen=True)
class Split:
    """A message as header fields (each with its folded lines) and body."""

    fields: list[bytes]
    body: bytes

    @property
    def header_size(self) -> int:
        return sum(len(f) for f in self.fields)


def split(message: bytes) -> Split:
    """Split at the first empty line; a field's continuation lines stay with it."""
    fields: list[bytes] = []
    position = 0
    length = len(message)
    while position < length:
        end = message.find(b"\r\n", position)
        end = length if end < 0 else end + 2
        line = message[position:end]
        if line in (b"\r\n", b""):
            position = end
            return Split(fields, message[position:])
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif b":" not in line.split(b"\r\n", 1)[0]:
            # Not a header line: the header section ended without a blank line.
            return Split(fields, message[position:])
        else:
            fields.append(line)
        position = end
    return Split(fields, b"")


def _name(header_field: bytes) -> bytes:
    return header_field.split(b":", 1)[0].strip().lower()


def forbidden_prefixes(rights: Iterable[P]) -> tuple[bytes, ...]:
    held = set(rights)
    prefixes: list[bytes] = [TRUST_PREFIX]
    if P.AcceptHeadersRouting not in held:
        prefixes += [b"received", b"resent-"]
    if P.AcceptHeadersOrganization not in held:
        prefixes.append(b"x-ms-exchange-organization-")
    if P.AcceptHeadersForest not in held:
        prefixes.append(b"x-ms-exchange-forest-")
    return tuple(prefixes)


def firewall(parts: Split, rights: Iterable[P]) -> Split:
    """Drop the fields the session's rights do not let through ("received" is a whole
    name, the others are prefixes)."""
    forbidden = forbidden_prefixes(rights)
    whole = b"received" in forbidden
    prefixes = tuple(p for p in forbidden if p != b"received")
    kept = []
    for header_field in parts.fields:
        name = _name(header_field)
        if not name.startswith(prefixes) and not (whole and name == b"received"):
            kept.append(header_field)
    return Split(kept, parts.body)


def hop_count(parts: Split) -> int:
    return sum(1 for f in parts.fields if _name(f) == b"received")


def trace(
    *,
    helo: str | None,
    remote: str,
    fqdn: str,
    connector: str,
    principal: str,
    tls: bool,
    authenticated: bool,
    rights: Iterable[P],
    queue_id: str,
) -> list[bytes]:
    """The Received header and the trust header for an accepted message."""
    held = set(rights)
    protocol = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
    date = email.utils.formatdate(localtime=False)
    received = (
        f"Received: from {helo or 'unknown'} ([{remote}])\r\n"
        f"\tby {fqdn} (smtpgate) with {protocol} id {queue_id}\r\n"
        f'\tvia connector "{connector}"; {date}\r\n'
    )
    flag = "yes" if authenticated or P.AcceptAuthenticationFlag in held else "no"
    spam = "bypass" if P.BypassAntiSpam in held else "apply"
    submission = (
        f'X-Smtpgate-Submission: connector="{connector}"; principal="{principal}";\r\n'
        f"\tauthenticated={flag}; anti-spam={spam}\r\n"
    )
    return [received.encode(), submission.encode()]


def join(new_fields: list[bytes], parts: Split) -> bytes:
    return b"".join(new_fields) + b"".join(parts.fields) + b"\r\n" + parts.body
