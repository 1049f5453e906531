"""The receive connectors every server role starts with (the reference's tables)."""

from __future__ import annotations

from dataclasses import dataclass

from .enums import AuthMechanism as A
from .enums import PermissionGroup as G
from .enums import ProtocolLoggingLevel, ServerRole, TransportRole, Usage
from .specs import ReceiveConnectorSpec
from .usage import ALL_V4, ALL_V6

ALL_BOTH = (ALL_V6, ALL_V4)


@dataclass(frozen=True)
class DefaultConnector:
    """One row of a default-connector table; ``name`` has ``<ServerName>`` still in it."""

    name: str
    transport_role: TransportRole
    usage: Usage
    logging: ProtocolLoggingLevel
    port: int
    bindings: tuple[str, ...]
    remote_ip_ranges: tuple[str, ...]
    auth_mechanisms: tuple[A, ...]
    permission_groups: tuple[G, ...]

    def spec(self, server: str) -> ReceiveConnectorSpec:
        return ReceiveConnectorSpec(
            server=server,
            transport_role=self.transport_role,
            usage=self.usage,
            bindings=list(self.bindings),
            remote_ip_ranges=list(self.remote_ip_ranges),
            auth_mechanisms=list(self.auth_mechanisms),
            permission_groups=list(self.permission_groups),
            protocol_logging_level=self.logging,
        )

    def named(self, server: str) -> str:
        return self.name.replace("<ServerName>", server)


def _both(port: int) -> tuple[str, ...]:
    return (f"0.0.0.0:{port}", f"[::]:{port}")


FE, HUB = TransportRole.FrontendTransport, TransportRole.HubTransport
NONE, VERBOSE = ProtocolLoggingLevel.None_, ProtocolLoggingLevel.Verbose

MAILBOX: tuple[DefaultConnector, ...] = (
    DefaultConnector(
        "Client Frontend <ServerName>",
        FE,
        Usage.Client,
        NONE,
        587,
        _both(587),
        ALL_BOTH,
        (A.TLS, A.BasicAuth, A.BasicAuthRequireTLS, A.Integrated),
        (G.ExchangeUsers,),
    ),
    DefaultConnector(
        "Default Frontend <ServerName>",
        FE,
        Usage.Internet,
        VERBOSE,
        25,
        _both(25),
        ALL_BOTH,
        (A.TLS, A.BasicAuth, A.BasicAuthRequireTLS, A.ExchangeServer, A.Integrated),
        (G.AnonymousUsers, G.ExchangeLegacyServers, G.ExchangeServers),
    ),
    DefaultConnector(
        "Outbound Proxy Frontend <ServerName>",
        FE,
        Usage.Internal,
        NONE,
        717,
        _both(717),
        ALL_BOTH,
        (A.TLS, A.BasicAuth, A.BasicAuthRequireTLS, A.ExchangeServer, A.Integrated),
        (G.ExchangeServers,),
    ),
    DefaultConnector(
        "Client Proxy <ServerName>",
        HUB,
        Usage.Client,
        NONE,
        465,
        _both(465),
        ALL_BOTH,
        (A.TLS, A.BasicAuth, A.BasicAuthRequireTLS, A.ExchangeServer, A.Integrated),
        (G.ExchangeServers, G.ExchangeUsers),
    ),
    DefaultConnector(
        "Default <ServerName>",
        HUB,
        Usage.Internal,
        NONE,
        2525,
        _both(2525),
        ALL_BOTH,
        (A.TLS, A.BasicAuth, A.ExchangeServer, A.Integrated),
        (G.ExchangeLegacyServers, G.ExchangeServers, G.ExchangeUsers),
    ),
)

EDGE: tuple[DefaultConnector, ...] = (
    DefaultConnector(
        "Default internal receive connector <ServerName>",
        HUB,
        Usage.Internet,
        NONE,
        25,
        ("0.0.0.0:25",),
        (ALL_V4,),
        (A.TLS, A.ExchangeServer),
        (G.AnonymousUsers, G.ExchangeServers, G.Partners),
    ),
)

# The implicit connector of the Mailbox Transport Delivery service: no resource, no management.
MAILBOX_DELIVERY = DefaultConnector(
    "Mailbox delivery Receive connector <ServerName>",
    HUB,
    Usage.Internal,
    NONE,
    475,
    _both(475),
    ALL_BOTH,
    (A.ExchangeServer,),
    (G.ExchangeServers,),
)


def for_role(role: ServerRole) -> tuple[DefaultConnector, ...]:
    """The connectors created with a server of ``role``."""
    return MAILBOX if role is ServerRole.Mailbox else EDGE
