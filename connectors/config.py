"""``ServerConfig``: the versioned, fully resolved document a server's receivers run from,
and the compiler that makes it from one server's connectors and accepted domains.

This is the one contract between the operator and the receiver.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from . import bindings, organization, permissions, ranges, usage
from .bindings import Binding
from .enums import (
    AcceptedDomainType,
    AuthMechanism,
    MessageRateSource,
    Permission,
    PermissionGroup,
    ProtocolLoggingLevel,
    ProxyProtocol,
    ServerRole,
    SizeMode,
    TransportRole,
    Usage,
)
from .errors import ConflictError, SpecError
from .kerberos import KerberosConfig, NtlmConfig
from .organization import Organization
from .specs import AcceptedDomainSpec, NextHop, ReceiveConnectorSpec, TransportServerSpec

SCHEMA_VERSION: Literal[1] = 1
CHOICES_KEPT = 4096  # connector choices a config remembers (ServerConfig.connector_for)


class _Frozen(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel
    )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy that remembers nothing of the original: what ``functools.cached_property``
        keeps beside the fields (parsed ranges, connector choices) was worked out from the
        original's fields, which ``update`` may have replaced."""
        copied = super().model_copy(update=update, deep=deep)
        fields = type(copied).model_fields
        for name in [n for n in copied.__dict__ if n not in fields]:
            del copied.__dict__[name]
        return copied


class TlsFiles(_Frozen):
    """The chosen certificate as the receiver finds it on disk."""

    cert_file: str
    key_file: str
    source: str
    not_after: str


class Limits(_Frozen):
    """A connector's limits and timeouts, every default already applied."""

    max_message_size: int
    max_recipients_per_message: int
    max_header_size: int
    max_hop_count: int
    max_inbound_connection: int
    max_inbound_connection_per_source: int
    max_inbound_connection_percentage_per_source: int
    connection_timeout_seconds: int
    connection_inactivity_timeout_seconds: int
    max_logon_failures: int
    max_protocol_errors: int
    tarpit_interval_seconds: int
    message_rate_limit: int | None
    message_rate_source: MessageRateSource


class Extensions(_Frozen):
    """Which ESMTP extensions the connector advertises."""

    pipelining: bool
    chunking: bool
    eight_bit_mime: bool
    binary_mime: bool
    dsn: bool
    enhanced_status_codes: bool
    size: SizeMode


class ConnectorConfig(_Frozen):
    """One enabled connector, resolved."""

    name: str
    transport_role: TransportRole
    usage: Usage
    bindings: tuple[str, ...]
    remote_ip_ranges: tuple[str, ...]
    auth_mechanisms: tuple[AuthMechanism, ...]
    permission_groups: tuple[PermissionGroup, ...]
    grants: dict[str, tuple[Permission, ...]]
    denies: dict[str, tuple[Permission, ...]]
    fqdn: str
    banner: str
    require_tls: bool
    domain_secure_enabled: bool
    tls: TlsFiles | None
    protocol_logging_level: ProtocolLoggingLevel
    limits: Limits
    extensions: Extensions

    @functools.cached_property
    def parsed_bindings(self) -> tuple[Binding, ...]:
        return tuple(bindings.parse(b) for b in self.bindings)

    @functools.cached_property
    def parsed_ranges(self) -> tuple[ranges.IPRange, ...]:
        return tuple(ranges.parse(r) for r in self.remote_ip_ranges)

    @functools.cached_property
    def acl(self) -> permissions.Acl:
        return permissions.Acl(
            grants={k: frozenset(v) for k, v in self.grants.items()},
            denies={k: frozenset(v) for k, v in self.denies.items()},
        )

    def offers(self, mechanism: AuthMechanism) -> bool:
        return mechanism in self.auth_mechanisms

    @property
    def starttls_available(self) -> bool:
        """STARTTLS is offered with a certificate to serve and the TLS mechanism, or the
        ExchangeServer mechanism (Direct Trust is mutual TLS: the Mailbox delivery
        connector offers ExchangeServer alone)."""
        return self.tls is not None and (
            self.offers(AuthMechanism.TLS) or self.offers(AuthMechanism.ExchangeServer)
        )

    @property
    def asks_client_certificate(self) -> bool:
        """Whether STARTTLS asks the client for its certificate: where one can make a
        principal (Direct Trust with ExchangeServer, partners with domain security)."""
        return self.offers(AuthMechanism.ExchangeServer) or self.domain_secure_enabled


class AcceptedDomain(_Frozen):
    """An accepted domain; ``domain`` may start with ``*.`` to take its subdomains too."""

    domain: str
    domain_type: AcceptedDomainType


class ServerConfig(_Frozen):
    """Everything one server's receivers need, fully resolved."""

    version: Literal[1] = SCHEMA_VERSION
    server: str
    namespace: str
    role: ServerRole
    fqdn: str
    connectors: tuple[ConnectorConfig, ...]
    accepted_domains: tuple[AcceptedDomain, ...]
    next_hop: NextHop
    user_database_file: str | None = None
    trusted_proxy_ranges: tuple[str, ...] = ()
    # Added within version 1: a document without it (written before) means Off, as it did.
    proxy_protocol: ProxyProtocol = ProxyProtocol.Off
    # Added within version 1: Kerberos and NTLM (absent: neither is offered).
    kerberos: KerberosConfig | None = None
    ntlm: NtlmConfig | None = None
    # Added within version 1: a document without it (written before) trusts no server
    # certificate and no partner, and leaves <Domain> unresolved, as it did.
    organization: Organization = Organization(domain="")

    @functools.cached_property
    def parsed_trusted_proxy_ranges(self) -> tuple[ranges.IPRange, ...]:
        return tuple(ranges.parse(r) for r in self.trusted_proxy_ranges)

    def trusted_proxy(self, peer: ranges.IPAddress) -> bool:
        """Whether ``peer`` is a proxy whose PROXY header this server takes."""
        return self.proxy_protocol != ProxyProtocol.Off and any(
            r.contains(peer) for r in self.parsed_trusted_proxy_ranges
        )

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerConfig:
        return cls.model_validate_json(text)

    def connector_for(
        self, local: ranges.IPAddress, port: int, remote: ranges.IPAddress
    ) -> ConnectorConfig | None:
        """The connector a connection from ``remote`` to ``local``:``port`` belongs to:
        the most specific remote range among connectors bound there; a connector bound to
        the exact local address beats an all-addresses one with the same range. Answers
        are remembered per config (a receiver asks on every connection, mostly for the same
        few clients), up to ``CHOICES_KEPT`` of them."""
        key = (local, port, remote)
        choices = self.connector_choices
        if key in choices:
            return choices[key]
        if len(choices) >= CHOICES_KEPT:
            choices.clear()
        choices[key] = chosen = self._choose_connector(local, port, remote)
        return chosen

    @functools.cached_property
    def connector_choices(self) -> dict[tuple[Any, int, Any], ConnectorConfig | None]:
        return {}

    def _choose_connector(
        self, local: ranges.IPAddress, port: int, remote: ranges.IPAddress
    ) -> ConnectorConfig | None:
        bound = [
            c for c in self.connectors if any(b.accepts(local, port) for b in c.parsed_bindings)
        ]
        exact = [
            c
            for c in bound
            if any(b.accepts(local, port) and not b.all_addresses for b in c.parsed_bindings)
        ]
        ordered = exact + [c for c in bound if c not in exact]
        return ranges.most_specific(((c, c.parsed_ranges) for c in ordered), remote)


def conflict(
    earlier_name: str, earlier: usage.Resolved, later: usage.Resolved
) -> ConflictError | None:
    """Why ``later`` may not share a server with ``earlier``, or None: on overlapping
    bindings, a remote range of ``later`` equals one of ``earlier`` or overlaps one without
    either containing the other. O(n log n) in the ranges (see ranges.Clash)."""
    binding = next(
        (b for b in later.bindings if any(b.overlaps(e) for e in earlier.bindings)), None
    )
    if binding is None:
        return None
    for index, r_later in enumerate(later.remote_ip_ranges):
        r_earlier = earlier.clash.first_clash(r_later)
        if r_earlier is None:
            continue
        if r_later == r_earlier:
            return ConflictError(
                f"spec.remoteIPRanges[{index}]",
                f"binding {binding} with remote range {r_later} is already used by "
                f"connector {earlier_name!r}",
                earlier_name,
            )
        return ConflictError(
            f"spec.remoteIPRanges[{index}]",
            f"remote range {r_later} overlaps {r_earlier} of connector {earlier_name!r} on "
            f"binding {binding} without one containing the other",
            earlier_name,
        )
    return None


@dataclass
class Compiled:
    """The outcome of compiling one server: its config, and the connectors left out."""

    config: ServerConfig
    rejected: dict[str, SpecError] = field(default_factory=dict)
    resolved: dict[str, usage.Resolved] = field(default_factory=dict)


def access_list(resolved: usage.Resolved, domain: str = "") -> permissions.Acl:
    """A connector's access list: its permission groups' grants, then its granular entries;
    ``<Domain>`` in principal names resolved to the organisation's ``domain``."""
    acl = permissions.resolve(
        resolved.permission_groups,
        [
            permissions.Entry(e.principal, frozenset(e.extended_rights), e.access)
            for e in resolved.spec.permissions
        ],
    )
    if not domain:
        return acl

    def named(table: Mapping[str, permissions.Rights]) -> dict[str, permissions.Rights]:
        out: dict[str, permissions.Rights] = {}
        for principal, rights in table.items():
            key = organization.resolve_principal(principal, domain)
            out[key] = out.get(key, frozenset()) | rights
        return dict(sorted(out.items()))

    return permissions.Acl(grants=named(acl.grants), denies=named(acl.denies))


def _connector(
    name: str,
    resolved: usage.Resolved,
    server_fqdn: str,
    tls: TlsFiles | None,
    domain: str = "",
) -> ConnectorConfig:
    spec = resolved.spec
    acl = access_list(resolved, domain)
    fqdn = (spec.fqdn or server_fqdn).rstrip(".")
    return ConnectorConfig(
        name=name,
        transport_role=spec.transport_role,
        usage=spec.usage,
        bindings=tuple(str(b) for b in resolved.bindings),
        remote_ip_ranges=tuple(str(r) for r in resolved.remote_ip_ranges),
        auth_mechanisms=resolved.auth_mechanisms,
        permission_groups=resolved.permission_groups,
        grants={k: tuple(sorted(v)) for k, v in acl.grants.items()},
        denies={k: tuple(sorted(v)) for k, v in acl.denies.items()},
        fqdn=fqdn,
        banner=spec.banner or f"220 {fqdn} ESMTP smtpgate ready",
        require_tls=spec.require_tls,
        domain_secure_enabled=spec.domain_secure_enabled,
        tls=tls,
        protocol_logging_level=spec.protocol_logging_level,
        limits=Limits(
            max_message_size=spec.max_message_size,
            max_recipients_per_message=spec.max_recipients_per_message,
            max_header_size=spec.max_header_size,
            max_hop_count=spec.max_hop_count,
            max_inbound_connection=spec.max_inbound_connection,
            max_inbound_connection_per_source=spec.max_inbound_connection_per_source,
            max_inbound_connection_percentage_per_source=(
                spec.max_inbound_connection_percentage_per_source
            ),
            connection_timeout_seconds=resolved.connection_timeout_seconds,
            connection_inactivity_timeout_seconds=resolved.connection_inactivity_timeout_seconds,
            max_logon_failures=spec.max_logon_failures,
            max_protocol_errors=spec.max_protocol_errors,
            tarpit_interval_seconds=spec.tarpit_interval_seconds,
            message_rate_limit=spec.message_rate_limit,
            message_rate_source=spec.message_rate_source,
        ),
        extensions=Extensions(
            pipelining=spec.pipelining_enabled,
            chunking=spec.chunking_enabled,
            eight_bit_mime=spec.eight_bit_mime_enabled,
            binary_mime=spec.binary_mime,
            dsn=spec.delivery_status_notification_enabled,
            enhanced_status_codes=spec.enhanced_status_codes_enabled,
            size=spec.size_enabled,
        ),
    )


def compile_server(
    name: str,
    namespace: str,
    server: TransportServerSpec,
    connectors: Sequence[tuple[str, ReceiveConnectorSpec]],
    domains: Sequence[AcceptedDomainSpec] = (),
    tls: Mapping[str, TlsFiles] | None = None,
    user_database_file: str | None = None,
    implicit: Sequence[tuple[str, ReceiveConnectorSpec]] = (),
    kerberos: KerberosConfig | None = None,
    ntlm: NtlmConfig | None = None,
    org: organization.Organization | None = None,
) -> Compiled:
    """Compile one server. ``connectors`` come in precedence order (oldest first): a later
    connector that conflicts with an earlier one is rejected, naming it. Disabled connectors
    and connectors of other servers are left out silently; invalid ones are rejected.
    ``implicit`` connectors (the Mailbox delivery connector) take part like the others.
    ``org``: the organisation (its domain, trusted servers and partners); without one the
    namespace's name in capitals is ``<Domain>`` and nobody is trusted by certificate."""
    tls = tls or {}
    org = org or organization.Organization(domain=organization.default_domain(namespace))
    accepted: list[tuple[str, usage.Resolved]] = []
    rejected: dict[str, SpecError] = {}
    for connector_name, spec in [*implicit, *connectors]:
        if spec.server != name or not spec.enabled:
            continue
        try:
            resolved = usage.resolve(spec, server.role)
        except SpecError as err:
            rejected[connector_name] = err
            continue
        clash = next(
            (c for other, r in accepted if (c := conflict(other, r, resolved)) is not None), None
        )
        if clash is not None:
            rejected[connector_name] = clash
            continue
        accepted.append((connector_name, resolved))
    config = ServerConfig(
        server=name,
        namespace=namespace,
        role=server.role,
        fqdn=server.fqdn.rstrip("."),
        connectors=tuple(
            _connector(n, r, server.fqdn, tls.get(n), org.domain) for n, r in accepted
        ),
        accepted_domains=tuple(
            AcceptedDomain(domain=d.pattern, domain_type=d.domain_type)
            for d in sorted(domains, key=lambda d: d.pattern)
        ),
        next_hop=server.next_hop,
        user_database_file=user_database_file,
        trusted_proxy_ranges=tuple(
            ranges.normalise(r) for r in server.exposure.trusted_proxy_ranges
        ),
        proxy_protocol=server.exposure.proxy_protocol_mode,
        kerberos=kerberos,
        ntlm=ntlm,
        organization=org,
    )
    return Compiled(config=config, rejected=rejected, resolved=dict(accepted))
