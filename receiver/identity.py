"""Who a session is: the security principals it holds, from the connector and from what it
proved (AUTH today; mutual TLS, GSSAPI and the PROXY protocol plug in here)."""

from __future__ import annotations

from smtpgate.connectors.config import ConnectorConfig
from smtpgate.connectors.enums import AuthMechanism, Principal

Principals = frozenset[str]


def anonymous(connector: ConnectorConfig) -> Principals:
    """Before any authentication. On an ExternalAuthoritative connector the connection is
    secured outside SMTP, so the session is the Externally Secured Servers principal."""
    if connector.offers(AuthMechanism.ExternalAuthoritative):
        return frozenset({Principal.ExternallySecuredServers.value})
    return frozenset({Principal.AnonymousLogon.value})


def authenticated_user(name: str) -> Principals:
    """A user who passed AUTH: Authenticated Users, and the user by name (for granular
    entries that name one user)."""
    return frozenset({Principal.AuthenticatedUsers.value, name})


def is_anonymous(principals: Principals) -> bool:
    return Principal.AnonymousLogon.value in principals
