"""Usage types and their defaults, role-dependent defaults, and the rules a spec must keep."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from . import bindings, certificates, ranges
from .enums import AuthMechanism as A
from .enums import PermissionGroup as G
from .enums import ServerRole, Usage
from .errors import SpecError
from .specs import ReceiveConnectorSpec

T = TypeVar("T")
ALL_V4 = str(ranges.ALL_IPV4)
ALL_V6 = str(ranges.ALL_IPV6)


@dataclass(frozen=True)
class UsageDefaults:
    """What a usage type fills in. ``None`` means the field must be given."""

    permission_groups: tuple[G, ...]
    auth_mechanisms: tuple[A, ...]
    bindings: tuple[str, ...] | None
    remote_ip_ranges: tuple[str, ...] | None


USAGE_DEFAULTS: Mapping[Usage, UsageDefaults] = {
    Usage.Client: UsageDefaults(
        (G.ExchangeUsers,),
        (A.TLS, A.BasicAuth, A.BasicAuthRequireTLS, A.Integrated),
        ("0.0.0.0:587", "[::]:587"),
        (ALL_V6, ALL_V4),
    ),
    Usage.Custom: UsageDefaults((G.None_,), (A.TLS,), None, None),
    Usage.Internal: UsageDefaults(
        (G.ExchangeLegacyServers, G.ExchangeServers),
        (A.TLS, A.ExchangeServer),
        ("0.0.0.0:25", "[::]:25"),
        (ALL_V6, ALL_V4),
    ),
    Usage.Internet: UsageDefaults((G.AnonymousUsers,), (A.TLS,), None, (ALL_V4,)),
    Usage.Partner: UsageDefaults((G.Partners,), (A.TLS,), None, None),
}

# (connectionTimeoutSeconds, connectionInactivityTimeoutSeconds) by server role.
TIMEOUTS: Mapping[ServerRole, tuple[int, int]] = {
    ServerRole.Mailbox: (600, 300),
    ServerRole.Edge: (300, 60),
}


@dataclass(frozen=True)
class Resolved:
    """A connector spec with every usage and role default filled in and validated."""

    spec: ReceiveConnectorSpec
    bindings: tuple[bindings.Binding, ...]
    remote_ip_ranges: tuple[ranges.IPRange, ...]
    auth_mechanisms: tuple[A, ...]
    permission_groups: tuple[G, ...]
    certificate_name: certificates.CertificateName | None
    connection_timeout_seconds: int
    connection_inactivity_timeout_seconds: int

    @functools.cached_property
    def clash(self) -> ranges.Clash:
        """The remote ranges, indexed for conflict checks against other connectors."""
        return ranges.Clash(self.remote_ip_ranges)


def _unique(values: Iterable[T]) -> tuple[T, ...]:
    return tuple(dict.fromkeys(values))


def resolve(spec: ReceiveConnectorSpec, role: ServerRole) -> Resolved:
    """Fill defaults from the usage type and the server role, and apply every rule.

    Raises SpecError naming the field at fault.
    """
    defaults = USAGE_DEFAULTS[spec.usage]
    if role is ServerRole.Edge and spec.usage is Usage.Client:
        raise SpecError("spec.usage", "Client usage is not available on Edge servers")

    # The spec model has kept every rule that does not depend on the server's role.
    binding_texts = spec.bindings if spec.bindings is not None else defaults.bindings
    range_texts = (
        spec.remote_ip_ranges if spec.remote_ip_ranges is not None else defaults.remote_ip_ranges
    )
    assert binding_texts is not None and range_texts is not None
    parsed_bindings = tuple(bindings.parse(b) for b in binding_texts)
    parsed_ranges = tuple(ranges.parse(r) for r in range_texts)

    auth = _unique(spec.auth_mechanisms or defaults.auth_mechanisms)
    groups = _unique(spec.permission_groups or defaults.permission_groups)
    if role is ServerRole.Edge and G.ExchangeLegacyServers in groups:
        raise SpecError(
            "spec.permissionGroups", "ExchangeLegacyServers is not available on Edge servers"
        )

    timeout, inactivity = TIMEOUTS[role]
    timeout = spec.connection_timeout_seconds or timeout
    inactivity = spec.connection_inactivity_timeout_seconds or inactivity
    if inactivity >= timeout:
        raise SpecError(
            "spec.connectionInactivityTimeoutSeconds",
            f"must be shorter than connectionTimeoutSeconds ({inactivity} >= {timeout})",
        )
    name = certificates.parse_name(spec.tls_certificate_name) if spec.tls_certificate_name else None
    return Resolved(
        spec=spec,
        bindings=parsed_bindings,
        remote_ip_ranges=parsed_ranges,
        auth_mechanisms=auth,
        permission_groups=groups,
        certificate_name=name,
        connection_timeout_seconds=timeout,
        connection_inactivity_timeout_seconds=inactivity,
    )
