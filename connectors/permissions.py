"""Permission groups, the permissions they grant, and the effective set after granular entries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .enums import (
    DOCUMENTED_PERMISSIONS,
    INTERNAL_PERMISSIONS,
    AuthMechanism,
    PermissionAccess,
    PermissionGroup,
    Principal,
)
from .enums import Permission as P

Rights = frozenset[P]

_ANONYMOUS: Rights = frozenset(
    {P.AcceptHeadersRouting, P.AcceptAnySender, P.AcceptAuthoritativeDomainSender, P.Submit}
)
_EXCHANGE_USERS: Rights = frozenset(
    {P.AcceptHeadersRouting, P.BypassAntiSpam, P.AcceptAnyRecipient, P.Submit}
)
_EXCHANGE_SERVERS: Rights = frozenset(DOCUMENTED_PERMISSIONS) | frozenset(INTERNAL_PERMISSIONS)
# The reference's "Externally Secured Servers" row: the documented rights less the forest and
# organization header rights, and none of the internal ones. (The reference spells one right
# "s-Exch-SMTP-Accept-Any-Recipient"; it is ms-Exch-SMTP-Accept-Any-Recipient.)
_SERVER_LIKE: Rights = frozenset(
    {
        P.AcceptHeadersRouting,
        P.BypassAntiSpam,
        P.BypassMessageSizeLimit,
        P.AcceptAnyRecipient,
        P.AcceptAnySender,
        P.AcceptAuthenticationFlag,
        P.AcceptAuthoritativeDomainSender,
        P.AcceptExch50,
        P.Submit,
    }
)
_PARTNERS: Rights = frozenset({P.AcceptHeadersRouting, P.Submit})

GROUP_GRANTS: Mapping[PermissionGroup, Mapping[Principal, Rights]] = {
    PermissionGroup.None_: {},
    PermissionGroup.AnonymousUsers: {Principal.AnonymousLogon: _ANONYMOUS},
    PermissionGroup.ExchangeUsers: {Principal.AuthenticatedUsers: _EXCHANGE_USERS},
    PermissionGroup.ExchangeServers: {
        Principal.ExchangeServers: _EXCHANGE_SERVERS,
        Principal.EdgeTransportServers: _EXCHANGE_SERVERS,
        Principal.HubTransportServers: _EXCHANGE_SERVERS,
        Principal.ExternallySecuredServers: _SERVER_LIKE,
    },
    PermissionGroup.ExchangeLegacyServers: {Principal.ExchangeLegacyInterop: _SERVER_LIKE},
    PermissionGroup.Partners: {Principal.PartnerServers: _PARTNERS},
}


@dataclass(frozen=True)
class Entry:
    """One granular entry: Add-ADPermission (Allow / Deny) or Remove-ADPermission (Remove)."""

    principal: str
    rights: Rights
    access: PermissionAccess = PermissionAccess.Allow


EFFECTIVE_KEPT = 256


@dataclass(frozen=True)
class Acl:
    """The resolved access list of one connector: rights granted and denied per principal."""

    grants: Mapping[str, Rights]
    denies: Mapping[str, Rights]
    # effective() of the principal sets seen last (every session of a connector asks for
    # the same few); memory only, emptied when full. Not part of the value.
    _memo: dict[frozenset[str], Rights] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def effective(self, principals: Iterable[str]) -> Rights:
        """What a session holding ``principals`` may do: every grant, less every deny."""
        if isinstance(principals, frozenset):
            known = self._memo.get(principals)
            if known is None:
                if len(self._memo) >= EFFECTIVE_KEPT:
                    self._memo.clear()
                known = self._memo[principals] = self._effective(principals)
            return known
        return self._effective(principals)

    def _effective(self, principals: Iterable[str]) -> Rights:
        held = list(principals)
        granted: set[P] = set()
        denied: set[P] = set()
        for principal in held:
            granted |= self.grants.get(principal, frozenset())
            denied |= self.denies.get(principal, frozenset())
        return frozenset(granted - denied)

    def denied(self, principals: Iterable[str]) -> Rights:
        """What a Deny entry refuses a session holding ``principals``."""
        refused: set[P] = set()
        for principal in principals:
            refused |= self.denies.get(principal, frozenset())
        return frozenset(refused)

    def rows(self) -> list[dict[str, Any]]:
        """Get-ADPermission's view, as a connector's ``status.effectivePermissions`` holds it:
        one row per principal and access, grants first."""
        return [
            {"principal": principal, "extendedRights": sorted(rights), "deny": deny}
            for deny, table in ((False, self.grants), (True, self.denies))
            for principal, rights in sorted(table.items())
        ]


def anonymous(mechanisms: Iterable[AuthMechanism]) -> frozenset[str]:
    """The principals of a session before any authentication. On an ExternalAuthoritative
    connector the connection is secured outside SMTP, so the session is the Externally
    Secured Servers principal."""
    if AuthMechanism.ExternalAuthoritative in mechanisms:
        return frozenset({Principal.ExternallySecuredServers.value})
    return frozenset({Principal.AnonymousLogon.value})


def authenticated_user(name: str) -> frozenset[str]:
    """A user who passed AUTH: Authenticated Users, and the user by name (for granular
    entries that name one user)."""
    return frozenset({Principal.AuthenticatedUsers.value, name})


def resolve(groups: Iterable[PermissionGroup], entries: Iterable[Entry] = ()) -> Acl:
    """Grants from the permission groups, then the granular entries in order."""
    grants: dict[str, set[P]] = {}
    denies: dict[str, set[P]] = {}
    for group in groups:
        for principal, rights in GROUP_GRANTS[group].items():
            grants.setdefault(principal.value, set()).update(rights)
    for entry in entries:
        if entry.access is PermissionAccess.Allow:
            grants.setdefault(entry.principal, set()).update(entry.rights)
        elif entry.access is PermissionAccess.Deny:
            denies.setdefault(entry.principal, set()).update(entry.rights)
        else:
            grants.setdefault(entry.principal, set()).difference_update(entry.rights)
    return Acl(
        grants={k: frozenset(v) for k, v in sorted(grants.items()) if v},
        denies={k: frozenset(v) for k, v in sorted(denies.items()) if v},
    )
