"""Who a session is: the security principals it holds, from the connector and from what it
proved: AUTH, a server certificate it presented on STARTTLS (Direct Trust), a partner
certificate that names the sending domain (domain security)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from smtpgate.connectors import organization, permissions
from smtpgate.connectors.config import ConnectorConfig
from smtpgate.connectors.enums import AuthMechanism, Permission, Principal
from smtpgate.connectors.organization import Organization, TrustedServer

Principals = frozenset[str]


def anonymous(connector: ConnectorConfig) -> Principals:
    """Before any authentication (the model's rule, which the kubectl plugin shows too)."""
    return permissions.anonymous(connector.auth_mechanisms)


def authenticated_user(name: str) -> Principals:
    """A user who passed AUTH: Authenticated Users, and the user by name."""
    return permissions.authenticated_user(name)


def is_anonymous(principals: Principals) -> bool:
    return Principal.AnonymousLogon.value in principals


@dataclass(frozen=True)
class TlsPeer:
    """What the handshake proved: the client's certificate (DER), if it sent one, and the
    trusted server it is (Direct Trust), if it is one."""

    certificate: bytes | None
    server: TrustedServer | None = None
    refused: bool = False  # a trusted server whose role may not submit on the connector


def after_starttls(
    connector: ConnectorConfig, org: Organization, certificate: bytes | None, now: dt.datetime
) -> tuple[Principals, TlsPeer]:
    """The principals once STARTTLS is done: a certificate of a server the organisation
    trusts (exactly that certificate, valid now) on a connector offering ExchangeServer
    holds its role's principals; anything else is anonymous, as before the handshake. A
    role whose principals may not submit on the connector is refused as AUTH would be
    (``policy.auth_result``): the session stays anonymous."""
    peer = TlsPeer(certificate)
    if certificate is None or not connector.offers(AuthMechanism.ExchangeServer):
        return anonymous(connector), peer
    server = organization.direct_trust(certificate, org.trusted_servers, now)
    if server is None:
        return anonymous(connector), peer
    principals = organization.role_principals(server.role, org.domain)
    if Permission.Submit not in connector.acl.effective(principals):
        return anonymous(connector), TlsPeer(certificate, server, refused=True)
    return principals, TlsPeer(certificate, server)


def partner(principals: Principals) -> Principals:
    """A session whose certificate authenticated the sending partner domain: it holds
    MS Exchange\\Partner Servers besides what it held."""
    return principals | {Principal.PartnerServers.value}
