"""``tlsCertificateName`` (``<I>issuer<S>subject``) and choosing a certificate by it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

NameKey = frozenset[tuple[str, str]]


SHORT_NAMES = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "S": NameOID.STATE_OR_PROVINCE_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "E": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
}


def _fold(value: str) -> str:
    return " ".join(value.split()).casefold()


def _split_unescaped(text: str, separators: str) -> list[str]:
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in separators:
            parts.append(current)
            current = ""
        else:
            current += char
    if escaped:
        raise ValueError("ends in a lone backslash")
    parts.append(current)
    return parts


def _unescape(value: str) -> str:
    out, chars = "", iter(value)
    for char in chars:
        out += next(chars, "") if char == "\\" else char
    return out


def _parse_dn(text: str) -> NameKey:
    pairs = set()
    for attribute in _split_unescaped(text, ",+;"):
        kind, sep, value = attribute.partition("=")
        kind = kind.strip().upper()
        if not sep or not kind or not value.strip():
            raise ValueError(f"{attribute.strip()!r} must look like TYPE=value")
        if kind in SHORT_NAMES:
            oid = SHORT_NAMES[kind].dotted_string
        elif all(part.isdigit() for part in kind.split(".")) and "." in kind:
            oid = kind
        else:
            raise ValueError(f"{kind!r} is not a known attribute type")
        pairs.add((oid, _fold(_unescape(value.strip()))))
    return frozenset(pairs)


def name_key(name: x509.Name | str) -> NameKey:
    """An order-, case- and spacing-insensitive key for an RFC 4514 distinguished name."""
    if isinstance(name, str):
        try:
            return _parse_dn(name.strip())
        except ValueError as err:
            raise ValueError(f"{name!r} is not an RFC 4514 name: {err}") from None
    return frozenset((a.oid.dotted_string, _fold(str(a.value))) for a in name)


@dataclass(frozen=True)
class CertificateName:
    """A parsed ``<I>issuer<S>subject`` value."""

    issuer: str
    subject: str

    @property
    def issuer_key(self) -> NameKey:
        return name_key(self.issuer)

    @property
    def subject_key(self) -> NameKey:
        return name_key(self.subject)

    def __str__(self) -> str:
        return f"<I>{self.issuer}<S>{self.subject}"


def parse_name(text: str) -> CertificateName:
    """Parse ``<I>CN=Contoso CA, O=Contoso<S>CN=mail.contoso.com``. Raises ValueError."""
    text = text.strip()
    if not text.startswith("<I>") or "<S>" not in text:
        raise ValueError(f"{text!r} must have the form <I>issuer<S>subject")
    issuer, _, subject = text[3:].partition("<S>")
    if not issuer.strip() or not subject.strip():
        raise ValueError(f"{text!r} must name both an issuer and a subject")
    parsed = CertificateName(issuer.strip(), subject.strip())
    if not parsed.issuer_key or not parsed.subject_key:
        raise ValueError(f"{text!r} must name both an issuer and a subject")
    return parsed


@dataclass(frozen=True)
class Candidate:
    """What the chooser needs to know of one certificate (from a ``kubernetes.io/tls``
    Secret); ``source`` names where it came from."""

    source: str
    issuer: NameKey
    subject: NameKey
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]

    @classmethod
    def from_certificate(cls, source: str, certificate: x509.Certificate) -> Candidate:
        try:
            san = certificate.extensions.get_extension_for_oid(
                ExtensionOID.SUBJECT_ALTERNATIVE_NAME
            ).value
            dns_names = tuple(san.get_values_for_type(x509.DNSName))  # type: ignore[attr-defined]
        except x509.ExtensionNotFound:
            dns_names = ()
        return cls(
            source=source,
            issuer=name_key(certificate.issuer),
            subject=name_key(certificate.subject),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            dns_names=dns_names,
        )

    def names(self, fqdn: str) -> bool:
        """True when a SAN DNS name (exact, or a one-label wildcard) covers ``fqdn``."""
        host = fqdn.rstrip(".").casefold()
        for name in self.dns_names:
            pattern = name.rstrip(".").casefold()
            if pattern == host:
                return True
            if pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
                return True
        return False


class Reason(StrEnum):
    """Why no certificate was chosen, most telling first."""

    NoCertificates = "NoCertificates"
    IssuerNotFound = "IssuerNotFound"
    SubjectNotFound = "SubjectNotFound"
    Expired = "Expired"
    NotYetValid = "NotYetValid"
    FqdnNotInSubjectAltName = "FqdnNotInSubjectAltName"


@dataclass(frozen=True)
class Choice:
    """The outcome: the chosen candidate, or the reason none fits and a sentence saying so."""

    chosen: Candidate | None
    reason: Reason | None
    message: str


def choose(
    name: CertificateName | None, fqdn: str, candidates: Iterable[Candidate], now: dt.datetime
) -> Choice:
    """The matching certificate valid now, naming ``fqdn``, that expires last. Without an
    issuer and subject (``name`` None), any valid certificate that names ``fqdn``."""
    pool = sorted(candidates, key=lambda c: c.source)
    if not pool:
        return Choice(None, Reason.NoCertificates, "no kubernetes.io/tls Secret in the namespace")
    if name is None:
        usable = [c for c in pool if c.not_before <= now < c.not_after and c.names(fqdn)]
        if not usable:
            return Choice(
                None, Reason.FqdnNotInSubjectAltName, f"no valid certificate names {fqdn!r}"
            )
        chosen = max(usable, key=lambda c: (c.not_after, c.source))
        return Choice(chosen, None, f"{chosen.source} (expires {chosen.not_after.isoformat()})")
    by_issuer = [c for c in pool if c.issuer == name.issuer_key]
    if not by_issuer:
        return Choice(None, Reason.IssuerNotFound, f"no certificate is issued by {name.issuer!r}")
    by_subject = [c for c in by_issuer if c.subject == name.subject_key]
    if not by_subject:
        return Choice(
            None,
            Reason.SubjectNotFound,
            f"certificates issued by {name.issuer!r} exist, none with subject {name.subject!r}",
        )
    current = [c for c in by_subject if c.not_before <= now < c.not_after]
    if not current:
        if all(c.not_after <= now for c in by_subject):
            latest = max(c.not_after for c in by_subject)
            return Choice(
                None,
                Reason.Expired,
                f"every matching certificate has expired (the latest on {latest.isoformat()}): "
                + ", ".join(c.source for c in by_subject),
            )
        return Choice(None, Reason.NotYetValid, "no matching certificate is valid yet")
    naming = [c for c in current if c.names(fqdn)]
    if not naming:
        return Choice(
            None,
            Reason.FqdnNotInSubjectAltName,
            f"matching certificates do not name {fqdn!r} in their subjectAltName: "
            + ", ".join(c.source for c in current),
        )
    chosen = max(naming, key=lambda c: (c.not_after, c.source))
    return Choice(chosen, None, f"{chosen.source} (expires {chosen.not_after.isoformat()})")
