"""Who a session is: the security principals it holds, from the connector and from what it
proved (AUTH today; mutual TLS, GSSAPI and the PROXY protocol plug in here)."""

from __future__ import annotations

from smtpgate.connectors import permissions
from smtpgate.connectors.config import ConnectorConfig
from smtpgate.connectors.enums import Principal

Principals = frozenset[str]


def anonymous(connector: ConnectorConfig) -> Principals:
    """Before any authentication (the model's rule, which the kubectl plugin shows too)."""
    return permissions.anonymous(connector.auth_mechanisms)


def authenticated_user(name: str) -> Principals:
    """A user who passed AUTH: Authenticated Users, and the user by name."""
    return permissions.authenticated_user(name)


def is_anonymous(principals: Principals) -> bool:
    return Principal.AnonymousLogon.value in principals
