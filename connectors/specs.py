"""The custom resources' specs as pydantic models: ReceiveConnector, TransportServer,
AcceptedDomain. Field names and documentation become the CRDs (see ``crd``)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic.alias_generators import to_camel

from . import bindings, certificates, ranges
from .enums import (
    AcceptedDomainType,
    AuthMechanism,
    MessageRateSource,
    Permission,
    PermissionAccess,
    PermissionGroup,
    ProtocolLoggingLevel,
    ServerRole,
    SizeMode,
    TransportRole,
    Usage,
)
from .errors import SpecError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|Ki|Mi|Gi|K|M|G)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "kb": KIB,
    "ki": KIB,
    "k": KIB,
    "mb": MIB,
    "mi": MIB,
    "m": MIB,
    "gb": GIB,
    "gi": GIB,
    "g": GIB,
}
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
    re.IGNORECASE,
)


def parse_size(value: Any) -> int:
    """Bytes from an integer or a size such as ``36MB`` (Exchange) or ``36Mi`` (Kubernetes);
    both mean binary multiples, as Exchange's do."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as 36MB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size may not be negative")
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    raise ValueError(
        f"{value!r} is not a size (use bytes, or a number with KB, MB, GB, Ki, Mi, Gi)"
    )


def _check_each(parse: Any) -> Any:
    def check(values: Any) -> Any:
        if isinstance(values, list):
            for value in values:
                if isinstance(value, str):
                    parse(value)
        return values

    return check


def _check_hostname(value: Any) -> Any:
    if isinstance(value, str) and not _HOSTNAME.match(value.rstrip(".")):
        raise ValueError(f"{value!r} must be a fully qualified domain name")
    return value


def _check_certificate_name(value: Any) -> Any:
    if isinstance(value, str):
        certificates.parse_name(value)
    return value


def _check_banner(value: Any) -> Any:
    if isinstance(value, str) and not re.match(r"^220( |$)", value):
        raise ValueError("must start with 220 (for example '220 mail.contoso.com ready')")
    if isinstance(value, str) and any(c in value for c in "\r\n"):
        raise ValueError("may not contain line breaks")
    return value


ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    ),
]
BindingList = Annotated[list[str], BeforeValidator(_check_each(bindings.parse))]
RangeList = Annotated[list[str], BeforeValidator(_check_each(ranges.parse))]
Hostname = Annotated[str, BeforeValidator(_check_hostname)]
CertificateNameText = Annotated[str, BeforeValidator(_check_certificate_name)]
Banner = Annotated[str, BeforeValidator(_check_banner)]


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        frozen=True,
        use_enum_values=False,
    )


class PermissionEntry(_Spec):
    """A granular permission entry: Add-ADPermission (Allow, Deny) or Remove-ADPermission."""

    principal: str = Field(
        min_length=1,
        description="The security principal, e.g. 'NT AUTHORITY\\ANONYMOUS LOGON', "
        "'NT AUTHORITY\\Authenticated Users', or an authenticated user name.",
    )
    extended_rights: list[Permission] = Field(
        min_length=1, description="The receive connector permissions this entry is about."
    )
    access: PermissionAccess = Field(
        PermissionAccess.Allow,
        description="Allow grants the rights (Add-ADPermission); Deny refuses them to anyone "
        "holding the principal and wins over every grant (Add-ADPermission -Deny); Remove takes "
        "them away from what the permission groups gave the principal (Remove-ADPermission).",
    )


class ReceiveConnectorSpec(_Spec):
    """How one server listens for SMTP connections from one set of sources."""

    server: str = Field(
        min_length=1, description="Name of the TransportServer this connector belongs to."
    )
    transport_role: TransportRole = Field(
        TransportRole.FrontendTransport,
        description="FrontendTransport (accepts client and Internet connections) or HubTransport "
        "(accepts connections from other transport services). Mailbox servers only.",
    )
    usage: Usage = Field(
        description="The usage type whose defaults fill the fields left unset: Client, Custom, "
        "Internal, Internet or Partner. Set at creation only."
    )
    bindings: BindingList | None = Field(
        None,
        description="Local IP address and TCP port pairs to listen on, e.g. '0.0.0.0:25', "
        "'[::]:25', '192.0.2.10:2525'. Defaults: Client [0.0.0.0:587, [::]:587]; Internal "
        "[0.0.0.0:25, [::]:25]; required for Custom, Internet and Partner.",
    )
    remote_ip_ranges: RangeList | None = Field(
        None,
        alias="remoteIPRanges",
        description="Source addresses this connector accepts: single addresses (192.0.2.75), "
        "ranges (192.0.2.1-192.0.2.99) or CIDR blocks (192.0.2.0/24, 2001:db8::/32). Where the "
        "ranges of connectors on one binding overlap, one must contain the other, and the most "
        "specific range wins. Defaults: all IPv4 and IPv6 (Client, Internal), all IPv4 "
        "(Internet); required for Custom and Partner.",
    )
    auth_mechanisms: list[AuthMechanism] | None = Field(
        None,
        description="Authentication mechanisms offered: None, TLS, BasicAuth, BasicAuthRequireTLS, "
        "Integrated, ExchangeServer, ExternalAuthoritative. Defaults from the usage type.",
    )
    permission_groups: list[PermissionGroup] | None = Field(
        None,
        description="Who may use the connector and with which permissions: None, AnonymousUsers, "
        "ExchangeUsers, ExchangeServers, ExchangeLegacyServers, Partners. Defaults from usage.",
    )
    tls_certificate_name: CertificateNameText | None = Field(
        None,
        description="The certificate for STARTTLS, by issuer and subject: "
        "'<I>CN=Contoso CA,O=Contoso<S>CN=mail.contoso.com'. Chosen from kubernetes.io/tls "
        "Secrets in the namespace: valid now, naming the fqdn, expiring last.",
    )
    protocol_logging_level: ProtocolLoggingLevel = Field(
        ProtocolLoggingLevel.None_, description="None or Verbose (writes the receive protocol log)."
    )
    fqdn: Hostname | None = Field(
        None,
        description="Name given in the banner and the EHLO response. Defaults to the server's.",
    )
    banner: Banner | None = Field(
        None, description="The 220 greeting; must start with '220'. Defaults to '220 <fqdn> ...'."
    )
    enabled: bool = Field(True, description="Whether the connector listens at all.")
    comment: str | None = Field(None, description="Free text for administrators.")
    require_tls: bool = Field(
        False, alias="requireTLS", description="Refuse MAIL FROM (530) until STARTTLS. Needs TLS."
    )
    domain_secure_enabled: bool = Field(
        False, description="Mutual TLS authentication with partner domains. Needs TLS."
    )
    max_message_size: ByteSize = Field(36 * MIB, description="Largest message accepted (36MB).")
    max_recipients_per_message: int = Field(200, ge=1, le=512000, description="RCPT limit (200).")
    max_header_size: ByteSize = Field(128 * KIB, description="Largest message header (128KB).")
    max_hop_count: int = Field(60, ge=1, le=500, description="Most Received headers allowed (60).")
    max_inbound_connection: int = Field(5000, ge=1, description="Simultaneous connections (5000).")
    max_inbound_connection_per_source: int = Field(
        20, ge=1, description="Simultaneous connections from one address (20)."
    )
    max_inbound_connection_percentage_per_source: int = Field(
        2, ge=1, le=100, description="Share of maxInboundConnection one address may hold (2)."
    )
    connection_timeout_seconds: int | None = Field(
        None, ge=1, description="Longest a connection may stay open: 600 on Mailbox, 300 on Edge."
    )
    connection_inactivity_timeout_seconds: int | None = Field(
        None,
        ge=1,
        description="Longest a connection may idle: 300 on Mailbox, 60 on Edge. Must be shorter "
        "than connectionTimeoutSeconds.",
    )
    max_logon_failures: int = Field(
        3, ge=0, description="Failed AUTH attempts before the connection is dropped (3)."
    )
    max_protocol_errors: int = Field(
        5, ge=0, description="Protocol errors before the connection is dropped (5)."
    )
    tarpit_interval_seconds: int = Field(
        5, ge=0, le=600, description="Delay of refusals to anonymous clients (5)."
    )
    message_rate_limit: int | None = Field(
        None, ge=1, description="Messages per minute from one source; unset means unlimited."
    )
    message_rate_source: MessageRateSource = Field(
        MessageRateSource.IPAddress,
        description="What the rate limit counts: None, User, IPAddress, All.",
    )
    pipelining_enabled: bool = Field(True, description="Advertise PIPELINING.")
    chunking_enabled: bool = Field(True, description="Advertise CHUNKING (BDAT) where supported.")
    eight_bit_mime_enabled: bool = Field(
        True, alias="eightBitMimeEnabled", description="Advertise 8BITMIME."
    )
    binary_mime_enabled: bool = Field(True, description="Advertise BINARYMIME; needs chunking.")
    delivery_status_notification_enabled: bool = Field(True, description="Advertise DSN.")
    enhanced_status_codes_enabled: bool = Field(True, description="Advertise ENHANCEDSTATUSCODES.")
    size_enabled: SizeMode = Field(
        SizeMode.Enabled,
        description="SIZE in the EHLO response: Enabled, Disabled, EnabledWithoutValue.",
    )
    permissions: list[PermissionEntry] = Field(
        default_factory=list,
        description="Granular permission entries, applied after the permission groups.",
    )


class ServiceExposure(_Spec):
    """How a server's bindings reach clients."""

    type: str = Field(
        "ClusterIP",
        pattern="^(ClusterIP|NodePort|LoadBalancer|HostNetwork)$",
        description="ClusterIP, NodePort or LoadBalancer Services (externalTrafficPolicy "
        "Local), or "
        "HostNetwork to bind node addresses directly.",
    )
    trusted_proxy_ranges: RangeList = Field(
        default_factory=list,
        description="Load balancers whose PROXY protocol header (v1/v2) is believed.",
    )


class NextHop(_Spec):
    """Where accepted mail goes."""

    type: str = Field(
        "Maildir",
        pattern="^(Smtp|Lmtp|Maildir)$",
        description="Smtp or Lmtp relay to host:port, or a durable Maildir spool.",
    )
    host: str | None = Field(None, description="Relay host (Smtp, Lmtp).")
    port: int | None = Field(None, ge=1, le=65535, description="Relay port (Smtp, Lmtp).")
    path: str = Field("/var/spool/smtpgate", description="Spool folder in the pod (Maildir).")
    sync: str = Field(
        "Filesystem",
        pattern="^(Filesystem|File)$",
        description=(
            "How the Maildir spool makes a group of messages durable before 250: Filesystem "
            "(one syncfs of the spool volume per group) or File (an fsync per message file, "
            "for volumes whose syncfs does not reach stable storage, such as some network "
            "filesystems)."
        ),
    )


class SecretKeyRef(_Spec):
    """A key of a Secret in the same namespace."""

    name: str = Field(min_length=1, description="The Secret's name.")
    key: str = Field("auth", description="The key holding the data.")


class TransportServerSpec(_Spec):
    """One Exchange-style transport server: its role, its receiver pods and where mail goes."""

    role: ServerRole = Field(ServerRole.Mailbox, description="Mailbox or Edge.")
    fqdn: Hostname = Field(description="The server's fully qualified domain name.")
    replicas: int = Field(1, ge=0, le=100, description="Receiver pods.")
    image: str | None = Field(
        None, description="Receiver image; defaults to the operator's setting."
    )
    exposure: ServiceExposure = Field(
        default_factory=ServiceExposure, description="How bindings are exposed."
    )
    next_hop: NextHop = Field(default_factory=NextHop, description="Where accepted mail goes.")
    user_database_secret_ref: SecretKeyRef | None = Field(
        None, description="htpasswd-style Secret of bcrypt hashes for BasicAuth."
    )
    create_default_connectors: bool = Field(
        True, description="Create the role's default receive connectors with the server."
    )


def _check_domain(value: Any) -> Any:
    if isinstance(value, str):
        name = value.strip().rstrip(".")
        name = name[2:] if name.startswith("*.") else name
        if not _HOSTNAME.match(name) or "." not in name and name != "localhost":
            raise ValueError(f"{value!r} must be a domain such as contoso.com or *.contoso.com")
    return value


DomainName = Annotated[str, BeforeValidator(_check_domain)]


class AcceptedDomainSpec(_Spec):
    """A domain the organisation accepts mail for."""

    domain_name: DomainName = Field(
        min_length=1, description="The domain, e.g. contoso.com, or *.contoso.com with subdomains."
    )
    domain_type: AcceptedDomainType = Field(
        AcceptedDomainType.Authoritative,
        description="Authoritative, InternalRelay or ExternalRelay.",
    )

    @property
    def pattern(self) -> str:
        return self.domain_name.strip().rstrip(".").lower()


def _field_path(loc: tuple[int | str, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_spec(model: type[_Spec], data: Any, prefix: str = "spec") -> Any:
    """Validate ``data`` as ``model``; the first problem becomes a SpecError naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(p for p in first["loc"] if not str(p).startswith("function-"))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "is not a known field"
        raise SpecError(_field_path(loc, prefix), message) from None
