"""Spec rules: every bad spec gets an error that names the field."""

from __future__ import annotations

from typing import Any

import pytest
from smtpgate.connectors import specs, usage
from smtpgate.connectors.enums import ServerRole
from smtpgate.connectors.errors import SpecError


def _spec(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "server": "ex01",
        "usage": "Custom",
        "bindings": ["0.0.0.0:25"],
        "remoteIPRanges": ["192.0.2.0/24"],
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def _error(data: dict[str, Any], role: ServerRole = ServerRole.Mailbox) -> SpecError:
    with pytest.raises(SpecError) as caught:
        usage.resolve(specs.parse_spec(specs.ReceiveConnectorSpec, data), role)
    return caught.value


@pytest.mark.parametrize(
    ("fields", "role", "field", "words"),
    [
        (
            {"authMechanisms": ["None", "TLS"]},
            ServerRole.Mailbox,
            "spec.authMechanisms",
            "None may not be combined",
        ),
        (
            {"authMechanisms": ["BasicAuthRequireTLS", "BasicAuth"]},
            ServerRole.Mailbox,
            "spec.authMechanisms",
            "BasicAuthRequireTLS needs BasicAuth and TLS",
        ),
        (
            {"authMechanisms": ["BasicAuthRequireTLS", "TLS"]},
            ServerRole.Mailbox,
            "spec.authMechanisms",
            "BasicAuthRequireTLS needs BasicAuth and TLS",
        ),
        (
            {"authMechanisms": ["ExternalAuthoritative"], "permissionGroups": ["AnonymousUsers"]},
            ServerRole.Mailbox,
            "spec.authMechanisms",
            "needs the ExchangeServers permission group",
        ),
        (
            {
                "authMechanisms": ["ExternalAuthoritative", "BasicAuth"],
                "permissionGroups": ["ExchangeServers"],
            },
            ServerRole.Mailbox,
            "spec.authMechanisms",
            "combined only with TLS",
        ),
        (
            {"authMechanisms": ["BasicAuth"], "requireTLS": True},
            ServerRole.Mailbox,
            "spec.requireTLS",
            "needs the TLS",
        ),
        (
            {"authMechanisms": ["BasicAuth"], "domainSecureEnabled": True},
            ServerRole.Mailbox,
            "spec.domainSecureEnabled",
            "needs the TLS",
        ),
        (
            {"usage": "Client", "bindings": None, "remoteIPRanges": None},
            ServerRole.Edge,
            "spec.usage",
            "not available on Edge",
        ),
        (
            {"permissionGroups": ["ExchangeLegacyServers"]},
            ServerRole.Edge,
            "spec.permissionGroups",
            "not available on Edge",
        ),
        (
            {"permissionGroups": ["None", "Partners"]},
            ServerRole.Mailbox,
            "spec.permissionGroups",
            "None may not be combined",
        ),
        ({"bindings": ["0.0.0.0"]}, ServerRole.Mailbox, "spec.bindings[0]", "must look like"),
        (
            {"bindings": ["0.0.0.0:25", "10.0.0.300:25"]},
            ServerRole.Mailbox,
            "spec.bindings[1]",
            "must name a valid IP address",
        ),
        ({"bindings": ["0.0.0.0:70000"]}, ServerRole.Mailbox, "spec.bindings[0]", "1 to 65535"),
        (
            {"bindings": ["0.0.0.0:25", "0.0.0.0:25"]},
            ServerRole.Mailbox,
            "spec.bindings[1]",
            "may not list one binding twice",
        ),
        ({"bindings": []}, ServerRole.Mailbox, "spec.bindings", "at least 1 item"),
        (
            {"remoteIPRanges": ["10.0.0.9-10.0.0.1"]},
            ServerRole.Mailbox,
            "spec.remoteIPRanges[0]",
            "starts after it ends",
        ),
        (
            {"remoteIPRanges": ["10.0.0.0/40"]},
            ServerRole.Mailbox,
            "spec.remoteIPRanges[0]",
            "must be an IP address, a range",
        ),
        (
            {"remoteIPRanges": None, "usage": "Partner"},
            ServerRole.Mailbox,
            "spec.remoteIPRanges",
            "must be given",
        ),
        (
            {"tlsCertificateName": "CN=mail.contoso.com"},
            ServerRole.Mailbox,
            "spec.tlsCertificateName",
            "<I>issuer<S>subject",
        ),
        (
            {"tlsCertificateName": "<I>not a dn<S>CN=x"},
            ServerRole.Mailbox,
            "spec.tlsCertificateName",
            "RFC 4514",
        ),
        (
            {"authMechanisms": ["BasicAuth"], "tlsCertificateName": "<I>CN=CA<S>CN=mail"},
            ServerRole.Mailbox,
            "spec.tlsCertificateName",
            "needs the TLS",
        ),
        ({"banner": "hello"}, ServerRole.Mailbox, "spec.banner", "must be 220"),
        ({"banner": "220 ok\r\n250 smuggled"}, ServerRole.Mailbox, "spec.banner", "no line breaks"),
        ({"banner": "220 bienvenue à Paris"}, ServerRole.Mailbox, "spec.banner", "US-ASCII"),
        ({"banner": "220 ok\x07"}, ServerRole.Mailbox, "spec.banner", "US-ASCII"),
        (
            {"connectionTimeoutSeconds": 120, "connectionInactivityTimeoutSeconds": 120},
            ServerRole.Mailbox,
            "spec.connectionInactivityTimeoutSeconds",
            "must be shorter",
        ),
        (
            {"connectionTimeoutSeconds": 30},
            ServerRole.Edge,
            "spec.connectionInactivityTimeoutSeconds",
            "60 on Edge servers",
        ),
        (
            {"connectionTimeoutSeconds": 200},
            ServerRole.Mailbox,
            "spec.connectionInactivityTimeoutSeconds",
            "(300 >= 200)",
        ),
        (
            {"chunkingEnabled": False, "binaryMimeEnabled": True},
            ServerRole.Mailbox,
            "spec.binaryMimeEnabled",
            "needs chunkingEnabled",
        ),
        ({"maxMessageSize": "lots"}, ServerRole.Mailbox, "spec.maxMessageSize", "is not a size"),
        (
            {"maxRecipientsPerMessage": 0},
            ServerRole.Mailbox,
            "spec.maxRecipientsPerMessage",
            "greater than or equal to 1",
        ),
        ({"fqdn": "not a host"}, ServerRole.Mailbox, "spec.fqdn", "fully qualified domain name"),
        ({"usage": "Webmail"}, ServerRole.Mailbox, "spec.usage", "Input should be"),
        (
            {"authMechanisms": ["Kerberos"]},
            ServerRole.Mailbox,
            "spec.authMechanisms[0]",
            "Input should be",
        ),
        ({"bindngs": ["0.0.0.0:25"]}, ServerRole.Mailbox, "spec.bindngs", "is not a known field"),
        ({"server": None}, ServerRole.Mailbox, "spec.server", "Field required"),
        (
            {"permissions": [{"principal": "bob", "extendedRights": ["ms-Exch-Fly"]}]},
            ServerRole.Mailbox,
            "spec.permissions[0].extendedRights[0]",
            "Input should be",
        ),
    ],
)
def test_invalid_spec_names_the_field(
    fields: dict[str, Any], role: ServerRole, field: str, words: str
) -> None:
    error = _error(_spec(**fields), role)
    assert error.field == field
    assert words in error.message


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("36MB", 36 * 1024 * 1024),
        ("36Mi", 36 * 1024 * 1024),
        ("128 KB", 131072),
        ("1GB", 1 << 30),
        ("512", 512),
    ],
)
def test_sizes_accept_exchange_and_kubernetes_units(value: Any, size: int) -> None:
    assert specs.parse_size(value) == size


@pytest.mark.parametrize(
    ("role", "timeout", "inactivity"), [(ServerRole.Mailbox, 600, 300), (ServerRole.Edge, 300, 60)]
)
def test_role_sets_default_timeouts(role: ServerRole, timeout: int, inactivity: int) -> None:
    resolved = usage.resolve(specs.ReceiveConnectorSpec.model_validate(_spec()), role)
    assert resolved.connection_timeout_seconds == timeout
    assert resolved.connection_inactivity_timeout_seconds == inactivity


def test_exchange_documented_defaults() -> None:
    spec = specs.ReceiveConnectorSpec.model_validate(_spec())
    assert spec.max_message_size == 36 * 1024 * 1024
    assert spec.max_recipients_per_message == 200
    assert spec.max_inbound_connection == 5000
    assert spec.max_inbound_connection_per_source == 20
    assert spec.max_inbound_connection_percentage_per_source == 2
    assert spec.max_header_size == 128 * 1024
    assert spec.max_hop_count == 60
    assert spec.max_logon_failures == 3
    assert spec.max_protocol_errors == 5
    assert spec.tarpit_interval_seconds == 5
    assert spec.message_rate_limit is None
    assert spec.enabled and not spec.require_tls
    assert spec.size_enabled.value == "Enabled"


def test_valid_spec_passes_every_rule() -> None:
    data = _spec(
        authMechanisms=["TLS", "BasicAuth", "BasicAuthRequireTLS"],
        permissionGroups=["ExchangeUsers"],
        requireTLS=True,
        tlsCertificateName="<I>CN=Contoso CA, O=Contoso<S>CN=mail.contoso.com",
        banner="220 mail.contoso.com welcomes you",
        maxMessageSize="50MB",
    )
    resolved = usage.resolve(specs.parse_spec(specs.ReceiveConnectorSpec, data), ServerRole.Mailbox)
    assert resolved.certificate_name is not None
    assert resolved.spec.max_message_size == 50 * 1024 * 1024


@pytest.mark.parametrize("domain", ["contoso.com", "*.fabrikam.com", "Contoso.COM."])
def test_accepted_domain_names(domain: str) -> None:
    assert specs.parse_spec(specs.AcceptedDomainSpec, {"domainName": domain})


@pytest.mark.parametrize(
    "domain", ["not a domain", "*", "contoso", "a..b", "*.*.com", "user@contoso.com"]
)
def test_malformed_accepted_domain_is_refused_naming_the_field(domain: str) -> None:
    with pytest.raises(SpecError) as caught:
        specs.parse_spec(specs.AcceptedDomainSpec, {"domainName": domain})
    assert caught.value.field == "spec.domainName" and "must be a domain" in caught.value.message


def test_next_hop_sync_is_filesystem_or_file() -> None:
    server = {"fqdn": "mail.contoso.com", "nextHop": {"type": "Maildir"}}
    assert specs.parse_spec(specs.TransportServerSpec, server).next_hop.sync == "Filesystem"
    server["nextHop"] = {"type": "Maildir", "sync": "Sometimes"}
    with pytest.raises(SpecError) as caught:
        specs.parse_spec(specs.TransportServerSpec, server)
    assert caught.value.field == "spec.nextHop.sync"
