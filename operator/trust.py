"""The organisation of a namespace as every server's config carries it: its TransportConfig
(the oldest, if several), ``<Domain>``, the server certificates the servers trust (each
TransportServer's self-signed one and the external servers listed) and the partners' trust
anchors; and what a connector can and cannot do with them, and which of its settings do
nothing here (status conditions). Pure."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from smtpgate.connectors import organization, specs
from smtpgate.connectors.config import ConnectorConfig
from smtpgate.connectors.enums import (
    AuthMechanism,
    Permission,
    Principal,
    ServerRole,
    TrustedServerRole,
)
from smtpgate.connectors.errors import SpecError
from smtpgate.connectors.organization import CertificateSource, Organization, TransportConfigSpec

from . import certs

Body = dict[str, Any]


@dataclass
class Resolved:
    """The organisation, and the statuses of the namespace's TransportConfigs."""

    org: Organization
    status: dict[str, Body] = field(default_factory=dict)


def _age(body: Body) -> tuple[str, str]:
    return body["metadata"].get("creationTimestamp") or "", body["metadata"]["name"]


def _cond(ok: bool, reason: str, message: str, gen: int | None) -> Body:
    return {
        "type": "Ready",
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:1000],
        "observedGeneration": gen,
    }


def _certificates(
    source: CertificateSource, objects: Mapping[tuple[str, str], Body | None], where: str
) -> tuple[list[x509.Certificate], str | None]:
    """The certificates a source names, or why there are none."""
    ref = source.reference()
    if ref is None:
        assert source.pem is not None
        text: bytes = source.pem.encode()
    else:
        kind, name, key = ref
        found = objects.get((kind, name))
        if found is None:
            return [], f"{where}: {kind} {name} not found"
        data = (found.get("data") or {}).get(key)
        if not data:
            return [], f"{where}: {kind} {name} has no key {key}"
        if kind == "ConfigMap":
            text = str(data).encode()
        else:
            try:
                text = base64.b64decode(data)
            except ValueError:
                return [], f"{where}: Secret {name} key {key} is not base64"
    try:
        return organization.load_pem(text), None
    except ValueError as err:
        return [], f"{where}: no PEM certificate: {err}"


def references(configs: list[Body]) -> set[tuple[str, str]]:
    """(kind, name) of every Secret and ConfigMap the TransportConfigs name (read from the
    raw specs, which may not parse)."""
    found: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for field_name, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                ref = node.get(field_name)
                if isinstance(ref, dict) and isinstance(ref.get("name"), str):
                    found.add((kind, ref["name"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for body in configs:
        walk(body.get("spec"))
    return found


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def resolve(
    namespace: str,
    servers: list[Body],
    configs: list[Body],
    secrets: list[Body],
    issued: Mapping[str, certs.SelfSigned] | None = None,
    referenced: Mapping[tuple[str, str], Body | None] | None = None,
) -> Resolved:
    """The organisation of ``namespace``: ``issued`` holds self-signed certificates made in
    this reconcile (not in the cache yet); ``referenced`` the Secrets and ConfigMaps the
    TransportConfig names that are not among the cached ``secrets``."""
    issued = issued or {}
    by_name = {s["metadata"]["name"]: s for s in secrets}
    objects: dict[tuple[str, str], Body | None] = {
        **(referenced or {}),
        **{("Secret", name): body for name, body in by_name.items()},
    }
    out = Resolved(org=Organization(domain=organization.default_domain(namespace)))
    trusted: list[organization.TrustedServer] = []
    sources: dict[str, str] = {}
    for server in sorted(servers, key=lambda s: s["metadata"]["name"]):
        name = server["metadata"]["name"]
        if server["metadata"].get("deletionTimestamp"):
            continue
        try:
            spec = specs.parse_spec(specs.TransportServerSpec, server.get("spec", {}))
        except SpecError:
            continue
        own = issued.get(name) or certs.read_self_signed(by_name.get(certs.self_signed_name(name)))
        if own is None:
            continue
        role = TrustedServerRole.Edge if spec.role is ServerRole.Edge else TrustedServerRole.Mailbox
        trusted.append(organization.trusted(name, role, own.certificate))
        sources[name] = f"Secret {own.secret_name}"
    ordered = sorted(configs, key=_age)
    chosen: TransportConfigSpec | None = None
    problems: list[str] = []
    anchors: list[str] = []
    for index, body in enumerate(ordered):
        name, gen = body["metadata"]["name"], body["metadata"].get("generation")
        if index > 0:
            out.status[name] = {
                "observedGeneration": gen,
                "conditions": [
                    _cond(
                        False,
                        "Duplicate",
                        f"TransportConfig {ordered[0]['metadata']['name']} is the namespace's "
                        "(the oldest); this one is not used",
                        gen,
                    )
                ],
            }
            continue
        try:
            chosen = specs.parse_spec(TransportConfigSpec, body.get("spec", {}))
        except SpecError as err:
            out.status[name] = {
                "observedGeneration": gen,
                "conditions": [_cond(False, "InvalidSpec", f"{err}; not used", gen)],
            }
            continue
        for i, server in enumerate(chosen.external_servers):
            found, problem = _certificates(
                server.certificate, objects, f"externalServers[{i}] ({server.name})"
            )
            if problem is not None:
                problems.append(problem)
                continue
            entry = organization.trusted(server.name, server.role, found[0])
            trusted.append(entry)
            sources[server.name] = (
                "inline PEM"
                if server.certificate.pem
                else (
                    f"Secret {server.certificate.secret_ref.name}"  # type: ignore[union-attr]
                )
            )
        for i, source in enumerate(chosen.partner_trust_anchors):
            found, problem = _certificates(source, objects, f"partnerTrustAnchors[{i}]")
            if problem is not None:
                problems.append(problem)
            anchors.extend(_pem(c) for c in found)
    domain = chosen.domain if chosen is not None and chosen.domain else out.org.domain
    out.org = Organization(
        domain=domain,
        trusted_servers=tuple(trusted),
        domain_secure_domains=tuple(
            sorted({d.rstrip(".").lower() for d in chosen.tls_receive_domain_secure_list})
        )
        if chosen is not None
        else (),
        partner_trust_anchors=tuple(dict.fromkeys(anchors)),
    )
    if ordered and chosen is not None:
        name, gen = ordered[0]["metadata"]["name"], ordered[0]["metadata"].get("generation")
        out.status[name] = {
            "observedGeneration": gen,
            "domain": domain,
            "trustedServers": [
                {
                    "name": t.name,
                    "role": t.role.value,
                    "source": sources.get(t.name, ""),
                    "sha256": t.sha256,
                    "notAfter": dt.datetime.fromisoformat(t.not_after).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                }
                for t in trusted
            ],
            "partnerTrustAnchors": len(out.org.partner_trust_anchors),
            "conditions": [
                _cond(False, "InvalidReference", "; ".join(problems), gen)
                if problems
                else _cond(
                    True,
                    "Resolved",
                    f"{len(trusted)} trusted servers, "
                    f"{len(out.org.domain_secure_domains)} domain-secure domains, "
                    f"{len(out.org.partner_trust_anchors)} partner trust anchors; in every "
                    "server's config",
                    gen,
                )
            ],
        }
    return out


# -- what a connector can do with it ----------------------------------------------------------


def holdable(connector: ConnectorConfig, org: Organization) -> frozenset[str]:
    """The principals a session on ``connector`` can come to hold: anonymous (or externally
    secured), users through AUTH, the organisation's servers through Direct Trust (with a
    certificate to serve STARTTLS), partners through domain security."""
    found = {
        Principal.ExternallySecuredServers.value
        if connector.offers(AuthMechanism.ExternalAuthoritative)
        else Principal.AnonymousLogon.value
    }
    known = {organization.resolve_principal(p.value, org.domain) for p in Principal}
    if connector.offers(AuthMechanism.BasicAuth) or connector.offers(AuthMechanism.Integrated):
        found.add(Principal.AuthenticatedUsers.value)
        found |= {p for p in (*connector.grants, *connector.denies) if p not in known}
    if connector.offers(AuthMechanism.ExchangeServer) and connector.starttls_available:
        for role in TrustedServerRole:
            found |= organization.role_principals(role, org.domain)
    if (
        connector.domain_secure_enabled
        and connector.starttls_available
        and org.domain_secure_domains
        and org.partner_trust_anchors
    ):
        found.add(Principal.PartnerServers.value)
    return frozenset(found)


def connector_conditions(
    connector: ConnectorConfig, org: Organization, gen: int | None
) -> tuple[list[Body], str | None, str]:
    """Conditions on what TLS-based settings do on this connector, and a reason and message
    when the connector cannot take any mail (so it is not Ready), else (None, "")."""
    out: list[Body] = []

    def cond(kind: str, ok: bool, reason: str, message: str) -> None:
        out.append({**_cond(ok, reason, message, gen), "type": kind})

    tls = connector.starttls_available
    if connector.offers(AuthMechanism.ExchangeServer):
        if tls:
            cond(
                "DirectTrust",
                True,
                "Enabled",
                f"{len(org.trusted_servers)} server certificates trusted (Direct Trust)",
            )
        else:
            cond(
                "DirectTrust",
                False,
                "NoCertificate",
                "ExchangeServer authentication (Direct Trust) is mutual TLS, and no certificate "
                "serves STARTTLS on this connector",
            )
    if connector.domain_secure_enabled:
        if not tls:
            cond("DomainSecure", False, "NoCertificate", "no certificate serves STARTTLS")
        elif not org.domain_secure_domains:
            cond(
                "DomainSecure",
                False,
                "NoDomainSecureList",
                "the TransportConfig lists no tlsReceiveDomainSecureList domains: no partner "
                "can be authenticated",
            )
        elif not org.partner_trust_anchors:
            cond(
                "DomainSecure",
                False,
                "NoPartnerTrustAnchors",
                "the TransportConfig has no partnerTrustAnchors: no partner certificate can be "
                "verified, and mail from the domain-secure domains is refused (454 4.7.5)",
            )
        else:
            cond(
                "DomainSecure",
                True,
                "Enabled",
                f"{len(org.domain_secure_domains)} partner domains, "
                f"{len(org.partner_trust_anchors)} trust anchors",
            )
    if connector.require_tls and not tls:
        return (
            out,
            "NoCertificate",
            "requireTLS refuses MAIL FROM until STARTTLS, and no certificate serves STARTTLS: "
            "every message is refused",
        )
    able = holdable(connector, org)
    if not any(Permission.Submit in connector.acl.effective({p}) for p in able):
        return (
            out,
            "NobodyCanSubmit",
            "no principal a session can hold here has ms-Exch-SMTP-Submit ("
            + ", ".join(sorted(able))
            + " can be held): every MAIL FROM is refused",
        )
    return out, None, ""


def inert_settings(raw_spec: Body, connector: ConnectorConfig, gen: int | None) -> list[Body]:
    """A condition naming the settings this connector was given that do nothing here (so
    that none is accepted and silently ignored); none when every setting works."""
    inert = []
    for key in ("chunkingEnabled", "binaryMimeEnabled"):
        if raw_spec.get(key) is True:
            inert.append(
                f"{key}: the SMTP engine has no BDAT, so CHUNKING and BINARYMIME are not advertised"
            )
    if (
        raw_spec.get("messageRateSource") == "User"
        and raw_spec.get("messageRateLimit") is not None
        and Principal.AuthenticatedUsers.value not in holdable(connector, Organization(domain=""))
    ):
        inert.append("messageRateSource User: no session here authenticates as a user")
    if not inert:
        return []
    return [{**_cond(False, "SettingsWithoutEffect", "; ".join(inert), gen), "type": "Effective"}]
