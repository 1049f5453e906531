"""Every row of every table in shared/reference/receive-connectors.txt, as test cases.

The expectations are written out from the reference text, not taken from the model."""

from __future__ import annotations

import pytest
from smtpgate.connectors import config, defaults, permissions, ranges, specs, usage
from smtpgate.connectors.enums import (
    AuthMechanism,
    Permission,
    PermissionGroup,
    Principal,
    ServerRole,
    TransportRole,
    Usage,
)
from smtpgate.connectors.errors import SpecError

ALL_V4 = {ranges.parse("0.0.0.0-255.255.255.255")}
ALL_BOTH = {ranges.parse("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")} | ALL_V4
V4_AND_V6 = ("0.0.0.0", "::")

# name, role, transport role, protocol logging, port, bind addresses, remote ranges, auth, groups
DEFAULT_CONNECTOR_ROWS = [
    (
        "Client Frontend <ServerName>",
        ServerRole.Mailbox,
        "FrontendTransport",
        "None",
        587,
        V4_AND_V6,
        ALL_BOTH,
        "TLS BasicAuth BasicAuthRequireTLS Integrated",
        "ExchangeUsers",
    ),
    (
        "Default Frontend <ServerName>",
        ServerRole.Mailbox,
        "FrontendTransport",
        "Verbose",
        25,
        V4_AND_V6,
        ALL_BOTH,
        "TLS BasicAuth BasicAuthRequireTLS ExchangeServer Integrated",
        "AnonymousUsers ExchangeLegacyServers ExchangeServers",
    ),
    (
        "Outbound Proxy Frontend <ServerName>",
        ServerRole.Mailbox,
        "FrontendTransport",
        "None",
        717,
        V4_AND_V6,
        ALL_BOTH,
        "TLS BasicAuth BasicAuthRequireTLS ExchangeServer Integrated",
        "ExchangeServers",
    ),
    (
        "Client Proxy <ServerName>",
        ServerRole.Mailbox,
        "HubTransport",
        "None",
        465,
        V4_AND_V6,
        ALL_BOTH,
        "TLS BasicAuth BasicAuthRequireTLS ExchangeServer Integrated",
        "ExchangeServers ExchangeUsers",
    ),
    (
        "Default <ServerName>",
        ServerRole.Mailbox,
        "HubTransport",
        "None",
        2525,
        V4_AND_V6,
        ALL_BOTH,
        "TLS BasicAuth ExchangeServer Integrated",
        "ExchangeLegacyServers ExchangeServers ExchangeUsers",
    ),
    (
        "Default internal receive connector <ServerName>",
        ServerRole.Edge,
        None,
        "None",
        25,
        ("0.0.0.0",),
        ALL_V4,
        "TLS ExchangeServer",
        "AnonymousUsers ExchangeServers Partners",
    ),
]


def _defaults_by_name(role: ServerRole) -> dict[str, defaults.DefaultConnector]:
    return {d.name: d for d in defaults.for_role(role)}


@pytest.mark.parametrize("row", DEFAULT_CONNECTOR_ROWS, ids=lambda r: r[0])
def test_default_connector_matches_reference_row(row: tuple) -> None:
    name, role, transport, logging, port, addresses, remote, auth, groups = row
    connector = _defaults_by_name(role)[name]
    resolved = usage.resolve(connector.spec("ex01"), role)
    if transport is not None:
        assert resolved.spec.transport_role == TransportRole(transport)
    assert resolved.spec.protocol_logging_level.value == logging
    assert {(b.address, b.port) for b in resolved.bindings} == {(a, port) for a in addresses}
    assert set(resolved.remote_ip_ranges) == remote
    assert [a.value for a in resolved.auth_mechanisms] == auth.split()
    assert [g.value for g in resolved.permission_groups] == groups.split()
    assert connector.named("EX01") == name.replace("<ServerName>", "EX01")


@pytest.mark.parametrize("role", list(ServerRole))
def test_each_role_has_exactly_the_reference_connectors(role: ServerRole) -> None:
    expected = {row[0] for row in DEFAULT_CONNECTOR_ROWS if row[1] is role}
    assert set(_defaults_by_name(role)) == expected


def test_implicit_mailbox_delivery_connector_matches_reference_row() -> None:
    delivery = defaults.MAILBOX_DELIVERY
    resolved = usage.resolve(delivery.spec("ex01"), ServerRole.Mailbox)
    assert {(b.address, b.port) for b in resolved.bindings} == {("0.0.0.0", 475), ("::", 475)}
    assert set(resolved.remote_ip_ranges) == ALL_BOTH
    assert resolved.auth_mechanisms == (AuthMechanism.ExchangeServer,)
    assert resolved.permission_groups == (PermissionGroup.ExchangeServers,)
    assert resolved.spec.protocol_logging_level.value == "None"


def test_default_connectors_of_a_mailbox_server_compile_without_conflict() -> None:
    server = specs.TransportServerSpec(fqdn="ex01.contoso.com")
    compiled = config.compile_server(
        "ex01",
        "mail",
        server,
        [(d.named("ex01"), d.spec("ex01")) for d in defaults.MAILBOX],
        implicit=[
            (defaults.MAILBOX_DELIVERY.named("ex01"), defaults.MAILBOX_DELIVERY.spec("ex01"))
        ],
    )
    assert compiled.rejected == {}
    assert len(compiled.config.connectors) == 6


# usage, permission groups, authentication mechanisms, default bindings, default ranges
USAGE_ROWS = [
    (
        Usage.Client,
        "ExchangeUsers",
        "TLS BasicAuth BasicAuthRequireTLS Integrated",
        {("0.0.0.0", 587), ("::", 587)},
        ALL_BOTH,
    ),
    (Usage.Custom, "None", "TLS", None, None),
    (
        Usage.Internal,
        "ExchangeLegacyServers ExchangeServers",
        "TLS ExchangeServer",
        {("0.0.0.0", 25), ("::", 25)},
        ALL_BOTH,
    ),
    (Usage.Internet, "AnonymousUsers", "TLS", None, ALL_V4),
    (Usage.Partner, "Partners", "TLS", None, None),
]


@pytest.mark.parametrize("row", USAGE_ROWS, ids=lambda r: r[0].value)
def test_usage_type_defaults_match_reference_row(row: tuple) -> None:
    usage_type, groups, auth, default_bindings, default_ranges = row
    given: dict = {"server": "ex01", "usage": usage_type}
    if default_bindings is None:
        given["bindings"] = ["192.0.2.10:2525"]
    if default_ranges is None:
        given["remoteIPRanges"] = ["198.51.100.0/24"]
    resolved = usage.resolve(specs.ReceiveConnectorSpec.model_validate(given), ServerRole.Mailbox)
    assert [g.value for g in resolved.permission_groups] == groups.split()
    assert [a.value for a in resolved.auth_mechanisms] == auth.split()
    if default_bindings is not None:
        assert {(b.address, b.port) for b in resolved.bindings} == default_bindings
    if default_ranges is not None:
        assert set(resolved.remote_ip_ranges) == default_ranges


@pytest.mark.parametrize("usage_type", [Usage.Custom, Usage.Internet, Usage.Partner])
def test_usage_types_without_default_bindings_require_them(usage_type: Usage) -> None:
    assert usage.USAGE_DEFAULTS[usage_type].bindings is None
    with pytest.raises(SpecError, match=r"spec\.bindings: must be given"):
        specs.parse_spec(
            specs.ReceiveConnectorSpec,
            {"server": "ex01", "usage": usage_type, "remoteIPRanges": ["192.0.2.1"]},
        )


def test_internal_usage_on_edge_drops_nothing_but_legacy_group_is_refused() -> None:
    spec = specs.ReceiveConnectorSpec(server="edge1", usage=Usage.Internal)
    with pytest.raises(
        ValueError, match="spec.permissionGroups: ExchangeLegacyServers is not available on Edge"
    ):
        usage.resolve(spec, ServerRole.Edge)
    explicit = spec.model_copy(update={"permission_groups": [PermissionGroup.ExchangeServers]})
    assert usage.resolve(explicit, ServerRole.Edge).permission_groups == (
        PermissionGroup.ExchangeServers,
    )


P = Permission
ANON = {P.AcceptHeadersRouting, P.AcceptAnySender, P.AcceptAuthoritativeDomainSender, P.Submit}
USERS = {P.AcceptHeadersRouting, P.BypassAntiSpam, P.AcceptAnyRecipient, P.Submit}
SERVERS_DOCUMENTED = {
    P.AcceptHeadersForest,
    P.AcceptHeadersOrganization,
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
INTERNAL = {
    P.AcceptXattr,
    P.AcceptXProxyFrom,
    P.AcceptXSessionParams,
    P.AcceptXShadow,
    P.AcceptXSysProbe,
    P.SendXMessageContextADRecipientCache,
    P.SendXMessageContextExtendedProperties,
    P.SendXMessageContextFastIndex,
}
SERVER_LIKE = {
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

# group, principal, permissions granted (the internal ones per the reference's notes)
GROUP_ROWS = [
    (PermissionGroup.AnonymousUsers, "NT AUTHORITY\\ANONYMOUS LOGON", ANON),
    (PermissionGroup.ExchangeUsers, "NT AUTHORITY\\Authenticated Users", USERS),
    (PermissionGroup.ExchangeServers, "<Domain>\\Exchange Servers", SERVERS_DOCUMENTED | INTERNAL),
    (
        PermissionGroup.ExchangeServers,
        "MS Exchange\\Edge Transport Servers",
        SERVERS_DOCUMENTED | INTERNAL,
    ),
    (
        PermissionGroup.ExchangeServers,
        "MS Exchange\\Hub Transport Servers",
        SERVERS_DOCUMENTED | INTERNAL,
    ),
    (PermissionGroup.ExchangeServers, "MS Exchange\\Externally Secured Servers", SERVER_LIKE),
    (PermissionGroup.ExchangeLegacyServers, "<Domain>\\ExchangeLegacyInterop", SERVER_LIKE),
    (PermissionGroup.Partners, "MS Exchange\\Partner Servers", {P.AcceptHeadersRouting, P.Submit}),
]


@pytest.mark.parametrize("row", GROUP_ROWS, ids=lambda r: f"{r[0].value}:{r[1]}")
def test_permission_group_grants_reference_permissions(row: tuple) -> None:
    group, principal, expected = row
    acl = permissions.resolve([group])
    assert acl.effective([principal]) == expected


@pytest.mark.parametrize("group", list(PermissionGroup))
def test_permission_group_grants_only_to_its_principals(group: PermissionGroup) -> None:
    expected = {row[1] for row in GROUP_ROWS if row[0] is group}
    assert set(permissions.resolve([group]).grants) == expected


def test_documented_and_internal_permission_counts() -> None:
    from smtpgate.connectors.enums import DOCUMENTED_PERMISSIONS, INTERNAL_PERMISSIONS

    assert set(DOCUMENTED_PERMISSIONS) == SERVERS_DOCUMENTED
    assert set(INTERNAL_PERMISSIONS) == INTERNAL
    assert Principal.ExternallySecuredServers.value == "MS Exchange\\Externally Secured Servers"
