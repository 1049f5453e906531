"""Names from the reference document, spelled exactly as Exchange spells them."""

from __future__ import annotations

from enum import StrEnum


class ServerRole(StrEnum):
    """What kind of Exchange server a TransportServer stands for."""

    Mailbox = "Mailbox"
    Edge = "Edge"


class TrustedServerRole(StrEnum):
    """The role a server trusted by its certificate (Direct Trust) has, which gives its
    principals: a Mailbox or Edge server, or a legacy server (ExchangeLegacyInterop)."""

    Mailbox = "Mailbox"
    Edge = "Edge"
    Legacy = "Legacy"


class ProxyProtocol(StrEnum):
    """Whether a server takes a PROXY protocol header (v1 or v2) from its trusted proxies:
    never, when one comes, or always. Peers outside the trusted ranges never may send one."""

    Off = "Off"
    Optional = "Optional"
    Required = "Required"


class TransportRole(StrEnum):
    """The transport service a connector belongs to on a Mailbox server."""

    FrontendTransport = "FrontendTransport"
    HubTransport = "HubTransport"


class Usage(StrEnum):
    """Usage types: the template of defaults a connector is created from."""

    Client = "Client"
    Custom = "Custom"
    Internal = "Internal"
    Internet = "Internet"
    Partner = "Partner"


class AuthMechanism(StrEnum):
    """Authentication mechanisms a connector offers."""

    None_ = "None"
    TLS = "TLS"
    BasicAuth = "BasicAuth"
    BasicAuthRequireTLS = "BasicAuthRequireTLS"
    Integrated = "Integrated"
    ExchangeServer = "ExchangeServer"
    ExternalAuthoritative = "ExternalAuthoritative"


class PermissionGroup(StrEnum):
    """Predefined sets of permissions granted to well-known principals."""

    None_ = "None"
    AnonymousUsers = "AnonymousUsers"
    ExchangeUsers = "ExchangeUsers"
    ExchangeServers = "ExchangeServers"
    ExchangeLegacyServers = "ExchangeLegacyServers"
    Partners = "Partners"


class Permission(StrEnum):
    """Receive connector permissions (extended rights): the documented eleven, then the
    eight internal ones held by the Exchange server principals."""

    AcceptHeadersForest = "ms-Exch-Accept-Headers-Forest"
    AcceptHeadersOrganization = "ms-Exch-Accept-Headers-Organization"
    AcceptHeadersRouting = "ms-Exch-Accept-Headers-Routing"
    BypassAntiSpam = "ms-Exch-Bypass-Anti-Spam"
    BypassMessageSizeLimit = "ms-Exch-Bypass-Message-Size-Limit"
    AcceptAnyRecipient = "ms-Exch-SMTP-Accept-Any-Recipient"
    AcceptAnySender = "ms-Exch-SMTP-Accept-Any-Sender"
    AcceptAuthenticationFlag = "ms-Exch-SMTP-Accept-Authentication-Flag"
    AcceptAuthoritativeDomainSender = "ms-Exch-SMTP-Accept-Authoritative-Domain-Sender"
    AcceptExch50 = "ms-Exch-SMTP-Accept-Exch50"
    Submit = "ms-Exch-SMTP-Submit"
    # Internal permissions (reserved for Exchange's own use; carried for fidelity).
    AcceptXattr = "ms-Exch-SMTP-Accept-Xattr"
    AcceptXProxyFrom = "ms-Exch-SMTP-Accept-XProxyFrom"
    AcceptXSessionParams = "ms-Exch-SMTP-Accept-XSessionParams"
    AcceptXShadow = "ms-Exch-SMTP-Accept-XShadow"
    AcceptXSysProbe = "ms-Exch-SMTP-Accept-XSysProbe"
    SendXMessageContextADRecipientCache = "ms-Exch-SMTP-Send-XMessageContext-ADRecipientCache"
    SendXMessageContextExtendedProperties = "ms-Exch-SMTP-Send-XMessageContext-ExtendedProperties"
    SendXMessageContextFastIndex = "ms-Exch-SMTP-Send-XMessageContext-FastIndex"


DOCUMENTED_PERMISSIONS: tuple[Permission, ...] = tuple(Permission)[:11]
INTERNAL_PERMISSIONS: tuple[Permission, ...] = tuple(Permission)[11:]


class Principal(StrEnum):
    """The well-known security principals that permission groups grant to."""

    AnonymousLogon = "NT AUTHORITY\\ANONYMOUS LOGON"
    AuthenticatedUsers = "NT AUTHORITY\\Authenticated Users"
    ExchangeServers = "<Domain>\\Exchange Servers"
    EdgeTransportServers = "MS Exchange\\Edge Transport Servers"
    HubTransportServers = "MS Exchange\\Hub Transport Servers"
    ExternallySecuredServers = "MS Exchange\\Externally Secured Servers"
    ExchangeLegacyInterop = "<Domain>\\ExchangeLegacyInterop"
    PartnerServers = "MS Exchange\\Partner Servers"


class AcceptedDomainType(StrEnum):
    """How the organisation treats mail for an accepted domain."""

    Authoritative = "Authoritative"
    InternalRelay = "InternalRelay"
    ExternalRelay = "ExternalRelay"


class ProtocolLoggingLevel(StrEnum):
    """Whether a connector writes the receive protocol log."""

    None_ = "None"
    Verbose = "Verbose"


class SizeMode(StrEnum):
    """How the SIZE extension is advertised in the EHLO response."""

    Enabled = "Enabled"
    Disabled = "Disabled"
    EnabledWithoutValue = "EnabledWithoutValue"


class MessageRateSource(StrEnum):
    """What the message rate limit is counted against."""

    None_ = "None"
    User = "User"
    IPAddress = "IPAddress"
    All = "All"


class PermissionAccess(StrEnum):
    """What a granular permission entry does (Add-ADPermission / Remove-ADPermission)."""

    Allow = "Allow"
    Deny = "Deny"
    Remove = "Remove"


class SpoolState(StrEnum):
    """What a receiver's ``/spool`` says of its spool: whether new MAIL is taken, and if
    not, why (the operator's ``SpoolHealthy`` condition gives the same reasons)."""

    HasRoom = "SpoolHasRoom"
    Full = "SpoolFull"
    Unwritable = "SpoolUnwritable"


class NextHopTls(StrEnum):
    """STARTTLS from the relay to an Smtp or Lmtp next hop: never, whenever the next hop
    offers it (in the clear otherwise), or always (nothing in the clear)."""

    Off = "Off"
    Opportunistic = "Opportunistic"
    Required = "Required"
