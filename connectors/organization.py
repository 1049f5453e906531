"""The organisation: ``TransportConfig`` (one per namespace, like Exchange's transport config)
and what it resolves to for every server: ``<Domain>``, the servers it trusts by certificate
(Direct Trust) and the partner domains it authenticates by mutual TLS (domain security).

Pure: certificates come in as bytes, and every decision takes ``now``."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from typing import Annotated

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .admission import Rule
from .enums import Principal, TrustedServerRole
from .fields import Hostname, Text
from .specs import DomainName, SecretKey, SecretName, _Spec

DOMAIN_PLACEHOLDER = "<Domain>"

OrganizationDomain = Annotated[
    str,
    Text(
        max_length=63,
        pattern=(
            "[A-Za-z0-9][A-Za-z0-9.-]*",
            "must be a domain name such as CONTOSO or contoso.local: letters, digits, '.' and '-'",
        ),
    ),
]


def _has_pem(value: str) -> None:
    if "-----BEGIN CERTIFICATE-----" not in value:
        raise ValueError("must hold a PEM certificate (-----BEGIN CERTIFICATE-----)")


PemText = Annotated[
    str,
    # Checked by the model only (a CEL rule over this length costs too much): the
    # operator's status says when a PEM text holds no certificate.
    Text(max_length=65536, check=_has_pem),
]


class CertificateSecretRef(_Spec):
    """PEM certificates in a Secret of the namespace (a kubernetes.io/tls one: cert-manager's)."""

    name: SecretName = Field(description="The Secret's name.")
    key: SecretKey = Field("tls.crt", description="The key holding PEM certificates.")


class CertificateConfigMapRef(_Spec):
    """PEM certificates in a ConfigMap of the namespace (a trust-manager bundle, say)."""

    name: SecretName = Field(description="The ConfigMap's name.")
    key: SecretKey = Field("ca.crt", description="The key holding PEM certificates.")


class CertificateSource(_Spec):
    """PEM certificates, given inline or read from a Secret or a ConfigMap."""

    RULES = (
        Rule(
            "[has(self.pem), has(self.secretRef), has(self.configMapRef)].filter(x, x).size() == 1",
            "exactly one of pem, secretRef and configMapRef must be given",
            lambda s: [s.pem, s.secret_ref, s.config_map_ref].count(None) == 2,
            "pem",
        ),
    )

    pem: PemText | None = Field(None, description="PEM certificates, inline.")
    secret_ref: CertificateSecretRef | None = Field(
        None,
        description="A Secret and its key (tls.crt or ca.crt). kubernetes.io/tls Secrets are "
        "watched; a Secret of another type is read again at each resync.",
    )
    config_map_ref: CertificateConfigMapRef | None = Field(
        None,
        alias="configMapRef",
        description="A ConfigMap and its key (ca.crt); read again at each resync.",
    )

    def reference(self) -> tuple[str, str, str] | None:
        """(kind, name, key) of the object it names, or None for inline PEM."""
        if self.secret_ref is not None:
            return "Secret", self.secret_ref.name, self.secret_ref.key
        if self.config_map_ref is not None:
            return "ConfigMap", self.config_map_ref.name, self.config_map_ref.key
        return None


class ExternalServer(_Spec):
    """A server outside the namespace that the organisation trusts by its certificate:
    a real Exchange server, another relay, a legacy server."""

    name: Hostname = Field(description="A name for the server (shown in logs and status).")
    role: TrustedServerRole = Field(
        description="Mailbox (<Domain>\\Exchange Servers and MS Exchange\\Hub Transport "
        "Servers), Edge (MS Exchange\\Edge Transport Servers) or Legacy "
        "(<Domain>\\ExchangeLegacyInterop)."
    )
    certificate: CertificateSource = Field(
        description="The certificate the server presents as a client on STARTTLS."
    )


class TransportConfigSpec(_Spec):
    """The organisation's transport settings (Exchange's Get-TransportConfig): one per
    namespace."""

    domain: OrganizationDomain | None = Field(
        None,
        description="The organisation's domain, the <Domain> of <Domain>\\Exchange Servers "
        "and <Domain>\\ExchangeLegacyInterop. Defaults to the namespace's name in capitals.",
    )
    external_servers: list[ExternalServer] = Field(
        default_factory=list,
        max_length=256,
        description="Servers outside the namespace trusted by certificate (Direct Trust), "
        "with the role whose principals they hold.",
    )
    tls_receive_domain_secure_list: list[DomainName] = Field(
        default_factory=list,
        alias="tlsReceiveDomainSecureList",
        max_length=1024,
        description="Partner domains whose mail is received with domain security (mutual TLS) "
        "on connectors with domainSecureEnabled; *.contoso.com takes the subdomains.",
    )
    partner_trust_anchors: list[CertificateSource] = Field(
        default_factory=list,
        max_length=64,
        description="CA certificates that partner certificates must chain to.",
    )


class _Frozen(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel
    )


class TrustedServer(_Frozen):
    """A server certificate the receiver trusts (Direct Trust): matched by the SHA-256 of
    the whole certificate, never as an authority."""

    name: str
    role: TrustedServerRole
    sha256: str
    not_after: str


class Organization(_Frozen):
    """What the organisation resolves to in a ServerConfig."""

    domain: str
    trusted_servers: tuple[TrustedServer, ...] = ()
    domain_secure_domains: tuple[str, ...] = ()
    partner_trust_anchors: tuple[str, ...] = ()  # PEM, one certificate each


def default_domain(namespace: str) -> str:
    return namespace.upper()


def fingerprint(der: bytes) -> str:
    """The SHA-256 of a certificate's DER, in lower-case hex."""
    return hashlib.sha256(der).hexdigest()


def load_pem(text: str | bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM text; ValueError when there is none or one does not parse."""
    data = text.encode() if isinstance(text, str) else text
    return x509.load_pem_x509_certificates(data)


def trusted(name: str, role: TrustedServerRole, certificate: x509.Certificate) -> TrustedServer:
    return TrustedServer(
        name=name,
        role=role,
        sha256=fingerprint(certificate.public_bytes(serialization.Encoding.DER)),
        not_after=certificate.not_valid_after_utc.isoformat(),
    )


def role_principals(role: TrustedServerRole, domain: str) -> frozenset[str]:
    """The principals a trusted server of ``role`` holds, ``<Domain>`` resolved."""
    names = {
        TrustedServerRole.Mailbox: (Principal.ExchangeServers, Principal.HubTransportServers),
        TrustedServerRole.Edge: (Principal.EdgeTransportServers,),
        TrustedServerRole.Legacy: (Principal.ExchangeLegacyInterop,),
    }[role]
    return frozenset(resolve_principal(p.value, domain) for p in names)


def resolve_principal(principal: str, domain: str) -> str:
    """``<Domain>\\Exchange Servers`` with the organisation's domain in place of ``<Domain>``."""
    if domain and principal.startswith(DOMAIN_PLACEHOLDER + "\\"):
        return domain + principal[len(DOMAIN_PLACEHOLDER) :]
    return principal


def direct_trust(
    der: bytes, servers: Sequence[TrustedServer], now: dt.datetime
) -> TrustedServer | None:
    """The trusted server whose certificate is exactly ``der`` and valid now, or None."""
    digest = fingerprint(der)
    match = next((s for s in servers if s.sha256 == digest), None)
    if match is None:
        return None
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        return None
    return match


def in_list(domain: str, patterns: Iterable[str]) -> str | None:
    """The entry of a domain list that takes ``domain`` (exact, or ``*.`` for subdomains)."""
    domain = domain.rstrip(".").lower()
    for pattern in patterns:
        if pattern.startswith("*."):
            if domain.endswith(pattern[1:]):
                return pattern
        elif domain == pattern:
            return pattern
    return None


def dns_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        ).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.DNSName))  # type: ignore[attr-defined]


def names_domain(certificate: x509.Certificate, domain: str) -> bool:
    """RFC 6125 matching of a SAN dNSName against ``domain``: exact, or a wildcard that
    stands for exactly one left-most label (``*.fabrikam.com`` names ``mx.fabrikam.com``,
    not ``fabrikam.com`` nor ``a.b.fabrikam.com``). Partners' certificates often name the
    domain itself; a name under it (``mail.fabrikam.com``) does not name the domain."""
    host = domain.rstrip(".").casefold()
    for name in dns_names(certificate):
        pattern = name.rstrip(".").casefold()
        if pattern == host:
            return True
        if pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _valid(certificate: x509.Certificate, now: dt.datetime) -> bool:
    return certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def chains_to(
    leaf: x509.Certificate, anchors: Sequence[x509.Certificate], now: dt.datetime, depth: int = 8
) -> bool:
    """Whether ``leaf`` is valid now and signed, through CA certificates of ``anchors`` (the
    bundle may hold intermediates), by one of them; each link valid now."""
    if not _valid(leaf, now):
        return False
    current = leaf
    for _ in range(depth):
        issuers = [
            a for a in anchors if a.subject == current.issuer and _is_ca(a) and _valid(a, now)
        ]
        signed = None
        for issuer in issuers:
            try:
                current.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError):
                continue
            signed = issuer
            break
        if signed is None:
            return False
        if signed == current or signed.subject == signed.issuer:
            return True  # reached a self-signed anchor
        current = signed
    return False


def anchors(pems: Iterable[str]) -> list[x509.Certificate]:
    found: list[x509.Certificate] = []
    for pem in pems:
        try:
            found.extend(load_pem(pem))
        except ValueError:
            continue
    return found


def partner_verified(
    der: bytes | None, trust: Sequence[x509.Certificate], domain: str, now: dt.datetime
) -> str | None:
    """Why a client certificate ``der`` does not authenticate the partner ``domain``, or
    None when it does: it chains to a trust anchor, is valid now and names the domain."""
    if der is None:
        return "no client certificate"
    try:
        leaf = x509.load_der_x509_certificate(der)
    except ValueError:
        return "the client certificate does not parse"
    if not _valid(leaf, now):
        return "the client certificate is expired or not yet valid"
    if not chains_to(leaf, trust, now):
        return "the client certificate does not chain to a partner trust anchor"
    if not names_domain(leaf, domain):
        return f"the client certificate does not name {domain}"
    return None
