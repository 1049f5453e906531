"""The custom resources' specs as pydantic models: ReceiveConnector, TransportServer,
AcceptedDomain. Field names and documentation become the CRDs (see ``crd``); every rule is
kept by the model and, as CEL or a schema keyword, by the apiserver (see ``admission``)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from . import admission
from .admission import Rule
from .enums import (
    AcceptedDomainType,
    AuthMechanism,
    MessageRateSource,
    NextHopTls,
    Permission,
    PermissionAccess,
    PermissionGroup,
    ProtocolLoggingLevel,
    ProxyProtocol,
    ServerRole,
    SizeMode,
    TransportRole,
    Usage,
)
from .errors import SpecError
from .fields import (
    GIB,
    KIB,
    MIB,
    SERVER_NAME_RULE,
    UNIQUE_BINDINGS,
    Banner,
    BindingList,
    ByteSize,
    CertificateNameText,
    Hostname,
    ImageName,
    KubeObject,
    LabelMap,
    Quantity,
    RangeText,
    RelayHost,
    ServerName,
    Text,
    Trimmed,
    check_server_name,
    parse_size,
    server_name_cel,
)
from .kerberos import KerberosSpec, NtlmSpec

__all__ = ["SERVER_NAME_RULE", "check_server_name", "parse_size", "server_name_cel"]


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        frozen=True,
        use_enum_values=False,
    )

    # Rules across fields, kept by the model (after the fields) and by the CRD (CEL).
    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _keep_rules(self) -> Any:
        return admission.enforce(self.RULES, self)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        schema = handler(core_schema)
        if cls.RULES:
            target = handler.resolve_ref_schema(schema)
            target.update(admission.schema(*cls.RULES))
        return schema


class PermissionEntry(_Spec):
    """A granular permission entry: Add-ADPermission (Allow, Deny) or Remove-ADPermission."""

    principal: Trimmed = Field(
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


def _given(values: Any) -> list[Any]:
    """A list field as the usage defaults read it: unset and empty both mean the default."""
    return list(values or ())


_AUTH = "has(self.authMechanisms) && size(self.authMechanisms) > 0"
_WITHOUT_TLS = f"({_AUTH} && !('TLS' in self.authMechanisms))"


def _needs_tls(field: str, attribute: str, given: str) -> Rule:
    return Rule(
        f"!({given}) || !{_WITHOUT_TLS}",
        "needs the TLS authentication mechanism",
        lambda s: (
            not getattr(s, attribute)
            or not _given(s.auth_mechanisms)
            or AuthMechanism.TLS in s.auth_mechanisms
        ),
        field,
    )


A, G = AuthMechanism, PermissionGroup
# The timeouts a server role gives when unset: Mailbox (600, 300), Edge (300, 60). Rules that
# hold for every role are kept here; usage.resolve keeps the rest, knowing the role.
_LONGEST_DEFAULT_TIMEOUT, _SHORTEST_DEFAULT_INACTIVITY = 600, 60


class ReceiveConnectorSpec(_Spec):
    """How one server listens for SMTP connections from one set of sources."""

    RULES = (
        Rule(
            "has(self.bindings) || self.usage in ['Client', 'Internal']",
            "must be given for Custom, Internet and Partner usage",
            lambda s: s.bindings is not None or s.usage in (Usage.Client, Usage.Internal),
            "bindings",
        ),
        Rule(
            "has(self.remoteIPRanges) || self.usage in ['Client', 'Internal', 'Internet']",
            "must be given for Custom and Partner usage",
            lambda s: (
                s.remote_ip_ranges is not None
                or s.usage in (Usage.Client, Usage.Internal, Usage.Internet)
            ),
            "remoteIPRanges",
        ),
        Rule(
            "!has(self.authMechanisms) || !('None' in self.authMechanisms) || "
            "self.authMechanisms.all(m, m == 'None')",
            "None may not be combined with other mechanisms",
            lambda s: (
                set(_given(s.auth_mechanisms)) <= {A.None_} or A.None_ not in s.auth_mechanisms
            ),
            "authMechanisms",
        ),
        Rule(
            "!has(self.authMechanisms) || !('BasicAuthRequireTLS' in self.authMechanisms) || "
            "('BasicAuth' in self.authMechanisms && 'TLS' in self.authMechanisms)",
            "BasicAuthRequireTLS needs BasicAuth and TLS",
            lambda s: (
                A.BasicAuthRequireTLS not in _given(s.auth_mechanisms)
                or {A.BasicAuth, A.TLS} <= set(s.auth_mechanisms)
            ),
            "authMechanisms",
        ),
        Rule(
            "!has(self.authMechanisms) || !('ExternalAuthoritative' in self.authMechanisms) || "
            "(has(self.permissionGroups) && size(self.permissionGroups) > 0 ? "
            "'ExchangeServers' in self.permissionGroups : self.usage == 'Internal')",
            "ExternalAuthoritative needs the ExchangeServers permission group",
            lambda s: (
                A.ExternalAuthoritative not in _given(s.auth_mechanisms)
                or (
                    G.ExchangeServers in s.permission_groups
                    if _given(s.permission_groups)
                    else s.usage is Usage.Internal
                )
            ),
            "authMechanisms",
        ),
        Rule(
            "!has(self.authMechanisms) || !('ExternalAuthoritative' in self.authMechanisms) || "
            "self.authMechanisms.all(m, m in ['ExternalAuthoritative', 'TLS'])",
            "ExternalAuthoritative may be combined only with TLS",
            lambda s: (
                A.ExternalAuthoritative not in _given(s.auth_mechanisms)
                or set(s.auth_mechanisms) <= {A.ExternalAuthoritative, A.TLS}
            ),
            "authMechanisms",
        ),
        _needs_tls("requireTLS", "require_tls", "has(self.requireTLS) && self.requireTLS"),
        _needs_tls(
            "domainSecureEnabled",
            "domain_secure_enabled",
            "has(self.domainSecureEnabled) && self.domainSecureEnabled",
        ),
        _needs_tls("tlsCertificateName", "tls_certificate_name", "has(self.tlsCertificateName)"),
        Rule(
            "!has(self.permissionGroups) || !('None' in self.permissionGroups) || "
            "self.permissionGroups.all(g, g == 'None')",
            "None may not be combined with other groups",
            lambda s: (
                set(_given(s.permission_groups)) <= {G.None_} or G.None_ not in s.permission_groups
            ),
            "permissionGroups",
        ),
        Rule(
            "has(self.connectionInactivityTimeoutSeconds) ? "
            "self.connectionInactivityTimeoutSeconds < (has(self.connectionTimeoutSeconds) ? "
            f"self.connectionTimeoutSeconds : {_LONGEST_DEFAULT_TIMEOUT}) : "
            "!has(self.connectionTimeoutSeconds) || "
            f"self.connectionTimeoutSeconds > {_SHORTEST_DEFAULT_INACTIVITY}",
            "must be shorter than connectionTimeoutSeconds (unset, these are 600 and 300 on "
            "Mailbox servers, 300 and 60 on Edge servers)",
            lambda s: (
                s.connection_inactivity_timeout_seconds
                < (s.connection_timeout_seconds or _LONGEST_DEFAULT_TIMEOUT)
                if s.connection_inactivity_timeout_seconds is not None
                else s.connection_timeout_seconds is None
                or s.connection_timeout_seconds > _SHORTEST_DEFAULT_INACTIVITY
            ),
            "connectionInactivityTimeoutSeconds",
        ),
        Rule(
            "!(has(self.binaryMimeEnabled) && self.binaryMimeEnabled) || "
            "!has(self.chunkingEnabled) || self.chunkingEnabled",
            "needs chunkingEnabled",
            lambda s: not s.binary_mime_enabled or s.chunking_enabled,
            "binaryMimeEnabled",
        ),
    )

    server: ServerName = Field(description="Name of the TransportServer this connector belongs to.")
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
        min_length=1,
        max_length=admission.MAX_BINDINGS,
        json_schema_extra=admission.schema(UNIQUE_BINDINGS),
        description="Local IP address and TCP port pairs to listen on, e.g. '0.0.0.0:25', "
        "'[::]:25', '192.0.2.10:2525'. Defaults: Client [0.0.0.0:587, [::]:587]; Internal "
        f"[0.0.0.0:25, [::]:25]; required for Custom, Internet and Partner. At most "
        f"{admission.MAX_BINDINGS}, each once.",
    )
    remote_ip_ranges: list[RangeText] | None = Field(
        None,
        alias="remoteIPRanges",
        min_length=1,
        max_length=admission.MAX_REMOTE_RANGES,
        description="Source addresses this connector accepts: single addresses (192.0.2.75), "
        "ranges (192.0.2.1-192.0.2.99) or CIDR blocks (192.0.2.0/24, 2001:db8::/32). Where the "
        "ranges of connectors on one binding overlap, one must contain the other, and the most "
        "specific range wins. Defaults: all IPv4 and IPv6 (Client, Internal), all IPv4 "
        f"(Internet); required for Custom and Partner. At most {admission.MAX_REMOTE_RANGES:,} "
        "ranges.",
    )
    auth_mechanisms: list[AuthMechanism] | None = Field(
        None,
        max_length=len(AuthMechanism),
        description="Authentication mechanisms offered: None, TLS, BasicAuth, BasicAuthRequireTLS, "
        "Integrated, ExchangeServer, ExternalAuthoritative. Defaults from the usage type.",
    )
    permission_groups: list[PermissionGroup] | None = Field(
        None,
        max_length=len(PermissionGroup),
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
        None,
        description="The 220 greeting: '220', then optionally a space and text of printable "
        "US-ASCII characters, spaces and tabs (RFC 5321), at most 510 characters in all. "
        "Defaults to '220 <fqdn> ...'.",
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
    binary_mime_enabled: bool | None = Field(
        None,
        description="Advertise BINARYMIME; true needs chunkingEnabled. Unset follows "
        "chunkingEnabled.",
    )
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

    @property
    def binary_mime(self) -> bool:
        """Whether BINARYMIME is advertised: as set, else as CHUNKING is."""
        if self.binary_mime_enabled is None:
            return self.chunking_enabled
        return self.binary_mime_enabled


class PortExposure(_Spec):
    """A Service type for one port of the all-address bindings."""

    port: int = Field(ge=1, le=65535, description="A port of an all-address binding.")
    type: str = Field(
        pattern="^(ClusterIP|NodePort|LoadBalancer)$",
        description="ClusterIP, NodePort or LoadBalancer, for this port alone.",
    )


QualifiedName = Annotated[
    str,
    Text(
        max_length=253,
        pattern=(
            r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?",
            "must be a qualified name such as metallb.io/metallb or service.k8s.aws/nlb",
        ),
    ),
]
_SERVICE_FIELDS = {
    "ports",
    "external_traffic_policy",
    "load_balancer_class",
    "annotations",
    "ip_family_policy",
    "ip_families",
}


def _types(exposure: Any) -> set[str]:
    return {exposure.type, *(p.type for p in exposure.ports)}


class ServiceExposure(_Spec):
    """How a server's bindings reach clients."""

    RULES = (
        Rule(
            "!has(self.ports) || self.ports.all(p, self.ports.exists_one(q, q.port == p.port))",
            "each port may be listed once",
            lambda s: len({p.port for p in s.ports}) == len(s.ports),
            "ports",
        ),
        Rule(
            "!has(self.proxyProtocol) || self.proxyProtocol == 'Off' || "
            "(has(self.trustedProxyRanges) && size(self.trustedProxyRanges) > 0)",
            "Optional and Required need trustedProxyRanges: only a trusted proxy may send a "
            "PROXY header",
            lambda s: s.proxy_protocol in (None, ProxyProtocol.Off) or bool(s.trusted_proxy_ranges),
            "proxyProtocol",
        ),
        Rule(
            "!has(self.type) || self.type != 'HostNetwork' || "
            "!(has(self.ports) || has(self.externalTrafficPolicy) || "
            "has(self.loadBalancerClass) || has(self.annotations) || "
            "has(self.ipFamilyPolicy) || has(self.ipFamilies))",
            "with HostNetwork there are no Services: ports, externalTrafficPolicy, "
            "loadBalancerClass, annotations, ipFamilyPolicy and ipFamilies do not apply",
            lambda s: s.type != "HostNetwork" or not (s.model_fields_set & _SERVICE_FIELDS),
            "type",
        ),
        Rule(
            "!has(self.loadBalancerClass) || (has(self.type) && self.type == 'LoadBalancer') || "
            "(has(self.ports) && self.ports.exists(p, p.type == 'LoadBalancer'))",
            "loadBalancerClass needs a LoadBalancer Service (type or a port)",
            lambda s: s.load_balancer_class is None or "LoadBalancer" in _types(s),
            "loadBalancerClass",
        ),
        Rule(
            "!has(self.externalTrafficPolicy) || (has(self.type) && self.type in "
            "['LoadBalancer', 'NodePort']) || (has(self.ports) && self.ports.exists(p, "
            "p.type in ['LoadBalancer', 'NodePort']))",
            "externalTrafficPolicy needs a LoadBalancer or NodePort Service (type or a port)",
            lambda s: (
                "external_traffic_policy" not in s.model_fields_set
                or bool({"LoadBalancer", "NodePort"} & _types(s))
            ),
            "externalTrafficPolicy",
        ),
    )

    type: str = Field(
        "ClusterIP",
        pattern="^(ClusterIP|NodePort|LoadBalancer|HostNetwork)$",
        description="ClusterIP, NodePort or LoadBalancer Services (externalTrafficPolicy "
        "Local), or "
        "HostNetwork to bind node addresses directly.",
    )
    ports: list[PortExposure] = Field(
        default_factory=list,
        max_length=32,
        description="Service types per port of the all-address bindings, e.g. 25 on a "
        "LoadBalancer while 2525, 475 and 717 stay ClusterIP. Ports not listed use type; each "
        "type gets a Service of its own (<server>-receiver for type, -lb, -nodeport, "
        "-clusterip for the others).",
    )
    external_traffic_policy: str = Field(
        "Local",
        pattern="^(Local|Cluster)$",
        description="LoadBalancer and NodePort Services: Local (the default) keeps the "
        "client's address, which remote IP ranges need; Cluster spreads traffic over every "
        "node but the receiver then sees a node's address unless the PROXY protocol is used.",
    )
    load_balancer_class: QualifiedName | None = Field(
        None, description="loadBalancerClass of LoadBalancer Services (MetalLB, a cloud's)."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations on every Service of the server (load balancer settings).",
    )
    ip_family_policy: str | None = Field(
        None,
        pattern="^(SingleStack|PreferDualStack|RequireDualStack)$",
        description="ipFamilyPolicy of the Services; PreferDualStack or RequireDualStack "
        "makes [::] bindings reachable over IPv6.",
    )
    ip_families: list[Literal["IPv4", "IPv6"]] = Field(
        default_factory=list,
        max_length=2,
        description="ipFamilies of the Services, in order: IPv4, IPv6.",
    )
    trusted_proxy_ranges: list[RangeText] = Field(
        default_factory=list,
        max_length=admission.MAX_TRUSTED_PROXY_RANGES,
        description="Load balancers whose PROXY protocol header (v1/v2) is believed. At most "
        f"{admission.MAX_TRUSTED_PROXY_RANGES:,} ranges.",
    )
    proxy_protocol: ProxyProtocol | None = Field(
        None,
        description="PROXY protocol from trustedProxyRanges: Required (the default when "
        "trustedProxyRanges are set: a trusted peer must send a header), Optional (a trusted "
        "peer may; the receiver waits briefly for one before its banner) or Off (the default "
        "without trustedProxyRanges). A header from any other peer closes the connection.",
    )

    @property
    def proxy_protocol_mode(self) -> ProxyProtocol:
        """The mode in force: as given, else Required where trusted proxies are listed
        (listing them says they send the header) and Off where none are."""
        if self.proxy_protocol is not None:
            return self.proxy_protocol
        return ProxyProtocol.Required if self.trusted_proxy_ranges else ProxyProtocol.Off


_RESERVED_PATHS = ("/tmp",)
_RESERVED_TREES = ("/etc/smtpgate", "/proc", "/sys", "/dev")
SpoolPath = Annotated[
    str,
    Text(
        Rule(
            "!self.split('/').exists(p, p == '.' || p == '..') && "
            f"!({list(_RESERVED_PATHS)}.exists(r, self == r)) && "
            f"!({list(_RESERVED_TREES)}.exists(r, self == r || self.startsWith(r + '/')))",
            "may not hold . or .. and may not be /tmp or in /etc/smtpgate, /proc, /sys or /dev "
            "(the receiver's own mounts and the system's)",
            lambda v: (
                not {".", ".."} & set(v.split("/"))
                and v not in _RESERVED_PATHS
                and not any(v == r or v.startswith(r + "/") for r in _RESERVED_TREES)
            ),
        ),
        max_length=1024,
        pattern=(admission.SPOOL_PATH, "must be an absolute path, without a trailing slash"),
    ),
]
_MAILDIR = "(!has(self.type) || self.type == 'Maildir')"


class ResourceRequirements(_Spec):
    """A container's resources, as in a pod spec."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="e.g. {cpu: 100m, memory: 128Mi}."
    )
    limits: dict[str, Quantity] = Field(default_factory=dict, description="e.g. {memory: 1Gi}.")


class PodSettings(_Spec):
    """Where and how the receiver pods run; each field goes to the pod template as written."""

    resources: ResourceRequirements | None = Field(
        None,
        description="The receiver container's resources. Default: requests 100m CPU and 128Mi; "
        "a memory limit sized from the connectors' limits (each connection the connectors "
        "allow may hold up to 512Ki at once, plus 256Mi).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector.")
    tolerations: list[KubeObject] = Field(
        default_factory=list, max_length=64, description="Tolerations."
    )
    affinity: KubeObject | None = Field(None, description="Affinity (node, pod, anti-affinity).")
    topology_spread_constraints: list[KubeObject] = Field(
        default_factory=list, max_length=16, description="Topology spread constraints."
    )
    priority_class_name: Hostname | None = Field(None, description="Priority class.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Pod annotations.")
    labels: LabelMap = Field(
        default_factory=dict,
        description="Extra pod labels (the operator's own labels take precedence).",
    )


class SpoolStorage(_Spec):
    """The Maildir spool's volume claim (one per replica)."""

    size: ByteSize = Field(GIB, description="Claim size (1Gi).")
    storage_class_name: Hostname | None = Field(
        None, description="Storage class; the cluster's default when unset."
    )
    when_deleted: str = Field(
        "Retain",
        pattern="^(Retain|Delete)$",
        description="What happens to the claims when the StatefulSet goes (the server is "
        "deleted, or its next hop becomes Smtp or Lmtp): Retain keeps them, and the mail in "
        "them, for an administrator to drain; Delete removes them.",
    )
    when_scaled: str = Field(
        "Retain",
        pattern="^(Retain|Delete)$",
        description="What happens to a claim whose replica is scaled away: Retain or Delete.",
    )
    min_free_percent: int = Field(
        5,
        ge=0,
        le=90,
        description="Back pressure: while less than this share of the spool volume (space or "
        "inodes) is free, new MAIL gets 452 4.3.1 and mail already queued keeps being "
        "delivered. 0 turns the check off.",
    )
    min_free_bytes: ByteSize = Field(
        64 * MIB,
        description="Back pressure: while less than this many bytes of the spool volume are "
        "free, new MAIL gets 452 4.3.1 (64Mi). 0 turns the check off.",
    )


class DisruptionBudget(_Spec):
    """The PodDisruptionBudget of the receiver pods."""

    max_unavailable: int = Field(
        1, ge=0, description="Receiver pods a voluntary disruption (a drain) may take at once."
    )


class QueueSettings(_Spec):
    """Store and forward: how the spool's queue retries and when it gives up."""

    retry_seconds: int = Field(
        60,
        ge=1,
        le=86400,
        description="First retry after a temporary failure; each later one waits as long as "
        "the message has been queued, up to maxRetrySeconds (Postfix's minimal_backoff_time).",
    )
    max_retry_seconds: int = Field(
        1800,
        ge=1,
        le=86400,
        description="Longest wait between two tries of one message (maximal_backoff_time).",
    )
    expiration_seconds: int = Field(
        2 * 86400,
        ge=60,
        le=30 * 86400,
        description="A message not delivered this long after it was accepted is returned to "
        "its sender with a delivery status notification (Exchange's "
        "MessageExpirationTimeout, 2 days).",
    )
    age_warning_seconds: int = Field(
        900,
        ge=1,
        description="The TransportServer's QueueHealthy condition turns False while the "
        "oldest queued message of a replica is older than this.",
    )
    concurrency: int = Field(
        16, ge=1, le=256, description="Messages each receiver process delivers at once."
    )


class NextHop(_Spec):
    """Where accepted mail goes."""

    RULES = (
        Rule(
            f"{_MAILDIR} || (has(self.host) && has(self.port))",
            "an Smtp or Lmtp next hop needs host and port",
            lambda s: s.type == "Maildir" or (s.host is not None and s.port is not None),
            "host",
        ),
        Rule(
            f"!{_MAILDIR} || (!has(self.host) && !has(self.port))",
            "host and port are for Smtp and Lmtp next hops; a Maildir next hop (the default "
            "type) spools mail in the pod",
            lambda s: s.type != "Maildir" or (s.host is None and s.port is None),
            "host",
        ),
        Rule(
            f"!{_MAILDIR} || !has(self.mode)",
            "mode is for Smtp and Lmtp next hops; a Maildir next hop only spools",
            lambda s: s.type != "Maildir" or s.mode is None,
            "mode",
        ),
        Rule(
            "!has(self.queue) || (has(self.mode) && self.mode == 'StoreAndForward')",
            "queue is for the StoreAndForward mode",
            lambda s: s.queue is None or s.mode == "StoreAndForward",
            "queue",
        ),
        Rule(
            f"!{_MAILDIR} || !has(self.tls)",
            "tls is for Smtp and Lmtp next hops; a Maildir next hop only spools",
            lambda s: s.type != "Maildir" or s.tls is None,
            "tls",
        ),
    )

    type: str = Field(
        "Maildir",
        pattern="^(Smtp|Lmtp|Maildir)$",
        description="Smtp or Lmtp relay to host:port, or a durable Maildir spool.",
    )
    host: RelayHost | None = Field(
        None, description="Relay host name or IP address (Smtp, Lmtp; required there)."
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="Relay port (Smtp, Lmtp; required there)."
    )
    mode: str | None = Field(
        None,
        pattern="^(Relay|StoreAndForward)$",
        description="Smtp and Lmtp: Relay (the default) answers 250 only once the next hop "
        "has the message; StoreAndForward answers 250 once the message is in the pod's spool "
        "and delivers it from there, retrying while the next hop is away and returning what "
        "it refuses to the sender.",
    )
    queue: QueueSettings | None = Field(
        None, description="Retries, expiry and alerting of the StoreAndForward queue."
    )
    tls: NextHopTls | None = Field(
        None,
        description="Smtp and Lmtp: STARTTLS to the next hop. Opportunistic (the default): "
        "encrypted whenever the next hop offers STARTTLS, else in the clear; a handshake that "
        "fails sends the message in the clear on a new connection. Required: never in the "
        "clear; a next hop that offers no STARTTLS, or whose handshake fails, gets nothing "
        "(451 4.7.4 or 4.7.5 to the client in Relay mode; the queue tries again in "
        "StoreAndForward). Off: always in the clear. The next hop's certificate is not "
        "checked (encryption against eavesdropping, not authentication of the next hop).",
    )
    path: SpoolPath = Field(
        "/var/spool/smtpgate",
        description="Spool folder in the pod (Maildir, StoreAndForward): an absolute path, "
        "not /tmp and not in "
        "/etc/smtpgate, /proc, /sys or /dev.",
    )
    storage: SpoolStorage = Field(
        default_factory=SpoolStorage,
        description="The spool's volume claims (Maildir, StoreAndForward).",
    )
    sync: str = Field(
        "Filesystem",
        pattern="^(Filesystem|File)$",
        description=(
            "How the Maildir spool makes a group of messages durable before 250: Filesystem "
            "(one journal commit per group on XFS, or on ext4 with a journal in ordered or "
            "journal data mode; elsewhere one syncfs of the spool volume per group) or File "
            "(an fsync per message file, for volumes whose syncfs does not reach stable "
            "storage, such as some network filesystems)."
        ),
    )

    @property
    def store_and_forward(self) -> bool:
        return self.mode == "StoreAndForward"

    @property
    def tls_mode(self) -> NextHopTls:
        """STARTTLS to an Smtp or Lmtp next hop: Off, Opportunistic (the default) or
        Required."""
        return self.tls or NextHopTls.Opportunistic

    @property
    def spooled(self) -> bool:
        """Whether accepted mail goes to the pod's spool first (Maildir, StoreAndForward)."""
        return self.type == "Maildir" or self.store_and_forward

    @property
    def queue_settings(self) -> QueueSettings:
        return self.queue or QueueSettings()


SecretName = Annotated[
    str,
    Text(
        max_length=253,
        pattern=(admission.DNS_SUBDOMAIN, "must be a Secret name (a DNS-1123 subdomain)"),
    ),
]
SecretKey = Annotated[
    str,
    Text(
        Rule(
            "self != '.' && self != '..'",
            "may not be . or ..",
            lambda v: v not in (".", ".."),
        ),
        max_length=253,
        pattern=(admission.SECRET_KEY, "must be a Secret key: letters, digits, '-', '_' and '.'"),
    ),
]


class SecretKeyRef(_Spec):
    """A key of a Secret in the same namespace."""

    name: SecretName = Field(description="The Secret's name.")
    key: SecretKey = Field("auth", description="The key holding the data.")


class TransportServerSpec(_Spec):
    """One Exchange-style transport server: its role, its receiver pods and where mail goes."""

    role: ServerRole = Field(ServerRole.Mailbox, description="Mailbox or Edge.")
    fqdn: Hostname = Field(description="The server's fully qualified domain name.")
    replicas: int = Field(1, ge=0, le=100, description="Receiver pods.")
    image: ImageName | None = Field(
        None, description="Receiver image; defaults to the operator's setting."
    )
    exposure: ServiceExposure = Field(
        default_factory=ServiceExposure, description="How bindings are exposed."
    )
    next_hop: NextHop = Field(default_factory=NextHop, description="Where accepted mail goes.")
    user_database_secret_ref: SecretKeyRef | None = Field(
        None,
        description="htpasswd-style Secret of bcrypt hashes for BasicAuth, a line per user: "
        "name:hash, optionally :addresses the user may send as (alice@contoso.com, or "
        "@fabrikam.com for a whole domain, comma-separated); a user named by an address may "
        "send as it. Reloaded by the receivers when the Secret changes.",
    )
    kerberos: KerberosSpec | None = Field(
        None,
        description="Kerberos for AUTH GSSAPI (Integrated) and X-EXPS GSSAPI (ExchangeServer): "
        "the keytab, the realm, this server's service principals.",
    )
    ntlm: NtlmSpec | None = Field(
        None, description="NTLM for AUTH NTLM (Integrated): the users' NT hashes."
    )
    create_default_connectors: bool = Field(
        True, description="Create the role's default receive connectors with the server."
    )
    pod: PodSettings = Field(
        default_factory=PodSettings,
        description="Resources, scheduling and metadata of the receiver pods.",
    )
    disruption_budget: DisruptionBudget = Field(
        default_factory=DisruptionBudget, description="The receivers' PodDisruptionBudget."
    )


DomainName = Annotated[
    str,
    Text(
        Rule(
            "size(self) - (self.startsWith('*.') ? 2 : 0) - (self.endsWith('.') ? 1 : 0) <= 253 && "
            + admission.cel_matches("self", admission.DOMAIN),
            "must be a domain such as contoso.com or *.contoso.com",
            lambda v: (
                len(v.removeprefix("*.").removesuffix(".")) <= 253
                and admission.matches(admission.DOMAIN, v)
            ),
        ),
        max_length=256,
    ),
]


class AcceptedDomainSpec(_Spec):
    """A domain the organisation accepts mail for."""

    domain_name: DomainName = Field(
        description="The domain, e.g. contoso.com, or *.contoso.com with subdomains."
    )
    domain_type: AcceptedDomainType = Field(
        AcceptedDomainType.Authoritative,
        description="Authoritative, InternalRelay or ExternalRelay.",
    )

    @property
    def pattern(self) -> str:
        return self.domain_name.rstrip(".").lower()


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
        loc: tuple[int | str, ...] = tuple(
            p for p in first["loc"] if not str(p).startswith("function-")
        )
        message = first["msg"].removeprefix("Value error, ")
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, admission.RuleError) and cause.field is not None:
            loc += (cause.field,)
        if first["type"] == "extra_forbidden":
            message = "is not a known field"
        raise SpecError(_field_path(loc, prefix), message) from None
