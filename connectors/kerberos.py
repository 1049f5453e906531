"""Integrated Windows authentication and Exchange server Kerberos: the TransportServer's
``spec.kerberos`` and ``spec.ntlm``, what they compile to in ``ServerConfig``, and which
security principals a Kerberos or NTLM identity holds on a connector.

A Kerberos principal of the server's realm is a user (``NT AUTHORITY\\Authenticated
Users`` and its name) on connectors with ``Integrated``. A service principal of one of the
organisation's servers (every TransportServer's ``spec.kerberos.servicePrincipals``) is
that Exchange server on connectors with ``ExchangeServer``: ``<Domain>\\Exchange Servers``
and ``MS Exchange\\Hub Transport Servers`` for a Mailbox server, ``MS Exchange\\Edge
Transport Servers`` for an Edge server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from . import admission, permissions
from .admission import Rule
from .enums import AuthMechanism, Principal, ServerRole
from .fields import Text

# Where the operator mounts what these settings name, inside the receiver pod.
KEYTAB_DIR = "/etc/smtpgate/kerberos"
KRB5_CONF_DIR = "/etc/smtpgate/krb5"
NTLM_DIR = "/etc/smtpgate/ntlm"

# Service/host@REALM, or Service/host (the server's realm is added).
_PRINCIPAL = r"[A-Za-z][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9.]*(@[A-Z0-9][-A-Z0-9.]*)?"
_REALM = r"[A-Z0-9][-A-Z0-9.]*"
_NETBIOS = r"[A-Za-z0-9][-A-Za-z0-9_.]{0,14}"

ServicePrincipal = Annotated[
    str,
    Text(
        max_length=255,
        pattern=(_PRINCIPAL, "must be a service principal such as SMTP/ex01.contoso.com"),
    ),
]
Realm = Annotated[
    str, Text(max_length=255, pattern=(_REALM, "must be a Kerberos realm in capitals"))
]
ObjectName = Annotated[
    str,
    Text(max_length=253, pattern=(admission.DNS_SUBDOMAIN, "must be a DNS-1123 subdomain")),
]
ObjectKey = Annotated[
    str,
    Text(
        Rule("self != '.' && self != '..'", "may not be . or ..", lambda v: v not in (".", "..")),
        max_length=253,
        pattern=(admission.SECRET_KEY, "must be a key: letters, digits, '-', '_' and '.'"),
    ),
]
NetbiosDomain = Annotated[
    str, Text(max_length=15, pattern=(_NETBIOS, "must be a NetBIOS domain name"))
]


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
    )


class KeyRef(_Spec):
    """A key of a Secret or ConfigMap in the same namespace."""

    name: ObjectName = Field(description="The object's name.")
    key: ObjectKey = Field(description="The key holding the data.")


class KerberosSpec(_Spec):
    """Kerberos (AUTH GSSAPI, X-EXPS GSSAPI) for this server's receivers."""

    realm: Realm = Field(
        description="The realm whose principals are the organisation's users (e.g. CONTOSO.COM)."
    )
    service_principals: list[ServicePrincipal] = Field(
        min_length=1,
        max_length=16,
        description="This server's service principals, in the keytab (e.g. SMTP/ex01.contoso.com "
        "and smtp/ex01.contoso.com); a client's ticket must be for one of them. They are also how "
        "the organisation's other servers know this one when it authenticates to them.",
    )
    keytab_secret_ref: KeyRef = Field(
        description="The Secret key holding the keytab with the service principals' keys. "
        "While the Secret or its key is missing, the server's SecretsReady and Ready are "
        "False (SecretNotFound, SecretKeyMissing) and its new pods wait for it."
    )
    krb5_config_map_ref: KeyRef | None = Field(
        None,
        description="A ConfigMap key holding krb5.conf (realms, KDCs, clock skew); the "
        "receivers use it as KRB5_CONFIG. Without it, the image's defaults. While the "
        "ConfigMap or its key is missing, the server's ConfigMapsReady and Ready are False "
        "(ConfigMapNotFound, ConfigMapKeyMissing) and its new pods wait for it.",
    )

    def principals(self) -> tuple[str, ...]:
        """The service principals with the realm made explicit."""
        return tuple(p if "@" in p else f"{p}@{self.realm}" for p in self.service_principals)


class NtlmSpec(_Spec):
    """NTLM (AUTH NTLM) for this server's receivers, from NT hashes, never passwords."""

    hashes_secret_ref: KeyRef = Field(
        description="The Secret key holding the users' NT hashes, a line per user: "
        "name:32-hex-digit NT hash (the same names as the user database, whose send-as "
        "lists apply)."
    )
    domain: NetbiosDomain | None = Field(
        None,
        description="The NetBIOS domain clients may name (DOMAIN\\user); without it, clients "
        "give the bare user name.",
    )


class KerberosConfig(BaseModel):
    """What a receiver needs to accept Kerberos: its keytab, its own principals, the users'
    realm, and the organisation's servers by service principal."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel
    )

    keytab_file: str
    realm: str
    service_principals: tuple[str, ...]
    servers: dict[str, ServerRole] = Field(default_factory=dict)


class NtlmConfig(BaseModel):
    """What a receiver needs to accept NTLM: the NT hash file and the NetBIOS domain."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel
    )

    hashes_file: str
    domain: str | None = None


def keytab_path(ref: KeyRef) -> str:
    return f"{KEYTAB_DIR}/{ref.key}"


def krb5_conf_path(ref: KeyRef) -> str:
    return f"{KRB5_CONF_DIR}/{ref.key}"


def ntlm_path(ref: KeyRef) -> str:
    return f"{NTLM_DIR}/{ref.key}"


def compile_kerberos(
    spec: KerberosSpec | None, organisation: Mapping[str, ServerRole]
) -> KerberosConfig | None:
    """``spec`` as the receiver runs it; ``organisation``: every server's service principal
    (realm explicit) to its role."""
    if spec is None:
        return None
    return KerberosConfig(
        keytab_file=keytab_path(spec.keytab_secret_ref),
        realm=spec.realm,
        service_principals=spec.principals(),
        servers=dict(sorted(organisation.items())),
    )


def compile_ntlm(spec: NtlmSpec | None) -> NtlmConfig | None:
    if spec is None:
        return None
    return NtlmConfig(hashes_file=ntlm_path(spec.hashes_secret_ref), domain=spec.domain)


def server_principals(role: ServerRole) -> frozenset[str]:
    """The Exchange server principals a server of ``role`` holds once it has proved who it
    is (Kerberos, X-EXPS GSSAPI)."""
    if role is ServerRole.Edge:
        return frozenset({Principal.EdgeTransportServers.value})
    return frozenset({Principal.ExchangeServers.value, Principal.HubTransportServers.value})


def principals_for(
    kerberos: KerberosConfig, mechanisms: tuple[AuthMechanism, ...], principal: str, servers: bool
) -> tuple[str, frozenset[str]] | None:
    """The user name and principals a Kerberos ``principal`` holds on a connector offering
    ``mechanisms``; None when it holds none there. ``servers``: the exchange was X-EXPS (or
    AUTH on a connector whose only Kerberos use is ExchangeServer), where only the
    organisation's servers may authenticate."""
    role = kerberos.servers.get(principal)
    if role is not None and AuthMechanism.ExchangeServer in mechanisms:
        return principal, server_principals(role)
    if servers or AuthMechanism.Integrated not in mechanisms:
        return None
    name, _, realm = principal.rpartition("@")
    if realm != kerberos.realm or not name or "/" in name:
        return None  # another realm's principal, or a service's: not one of our users
    return name, permissions.authenticated_user(name)


def sasl_mechanisms(mechanisms: tuple[AuthMechanism, ...], available: frozenset[str]) -> list[str]:
    """The AUTH mechanisms Integrated and ExchangeServer add, of those the server has
    credentials for (``available``: GSSAPI with a keytab, NTLM with NT hashes)."""
    offered = []
    kerberos_use = (
        AuthMechanism.Integrated in mechanisms or AuthMechanism.ExchangeServer in mechanisms
    )
    if "GSSAPI" in available and kerberos_use:
        offered.append("GSSAPI")
    if "NTLM" in available and AuthMechanism.Integrated in mechanisms:
        offered.append("NTLM")
    return offered


def exps_mechanisms(mechanisms: tuple[AuthMechanism, ...], available: frozenset[str]) -> list[str]:
    """The X-EXPS mechanisms (Exchange server authentication) a connector offers."""
    if "GSSAPI" in available and AuthMechanism.ExchangeServer in mechanisms:
        return ["GSSAPI"]
    return []


def missing_credentials(
    mechanisms: tuple[AuthMechanism, ...], has_kerberos: bool, has_ntlm: bool
) -> list[str] | None:
    """What a connector's Integrated and ExchangeServer cannot offer for want of its server's
    credentials (``spec.kerberos``, ``spec.ntlm``); None when it has neither mechanism."""
    integrated = AuthMechanism.Integrated in mechanisms
    if not integrated and AuthMechanism.ExchangeServer not in mechanisms:
        return None
    missing = []
    if not has_kerberos:
        missing.append("GSSAPI (spec.kerberos)")
    if integrated and not has_ntlm:
        missing.append("NTLM (spec.ntlm)")
    return missing
