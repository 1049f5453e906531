"""ServerConfig: compilation, conflicts, effective permissions, and the JSON contract."""

from __future__ import annotations

import pytest
from smtpgate.connectors import config, defaults, permissions, ranges, specs
from smtpgate.connectors.enums import Permission, PermissionAccess, PermissionGroup, Principal

SERVER = specs.TransportServerSpec(fqdn="ex01.contoso.com")


def _connector(**fields: object) -> specs.ReceiveConnectorSpec:
    data: dict[str, object] = {
        "server": "ex01",
        "usage": "Custom",
        "bindings": ["0.0.0.0:25"],
        "remoteIPRanges": ["192.0.2.0/24"],
    }
    data.update(fields)
    return specs.ReceiveConnectorSpec.model_validate(data)


def test_config_round_trips_through_json_exactly() -> None:
    compiled = config.compile_server(
        "ex01",
        "mail",
        SERVER,
        [(d.named("ex01"), d.spec("ex01")) for d in defaults.MAILBOX]
        + [
            (
                "partner",
                _connector(
                    permissions=[
                        {
                            "principal": "bob",
                            "extendedRights": ["ms-Exch-SMTP-Submit"],
                            "access": "Deny",
                        }
                    ]
                ),
            )
        ],
        [
            specs.AcceptedDomainSpec(domain_name="Contoso.com."),
            specs.AcceptedDomainSpec(domain_name="*.fabrikam.com", domain_type="InternalRelay"),
        ],
        tls={
            "partner": config.TlsFiles(
                cert_file="/tls/a/tls.crt",
                key_file="/tls/a/tls.key",
                source="a",
                not_after="2030-01-01T00:00:00+00:00",
            )
        },
        user_database_file="/users/auth",
    )
    text = compiled.config.to_json()
    again = config.ServerConfig.from_json(text)
    assert again == compiled.config
    assert again.to_json() == text
    assert [d.domain for d in again.accepted_domains] == ["*.fabrikam.com", "contoso.com"]


def test_unknown_config_version_is_refused() -> None:
    text = config.compile_server("ex01", "mail", SERVER, []).config.to_json()
    with pytest.raises(ValueError, match="version"):
        config.ServerConfig.from_json(text.replace('"version": 1', '"version": 2'))


def test_identical_binding_and_range_on_one_server_conflict_naming_the_other() -> None:
    compiled = config.compile_server(
        "ex01", "mail", SERVER, [("first", _connector()), ("second", _connector())]
    )
    assert [c.name for c in compiled.config.connectors] == ["first"]
    error = compiled.rejected["second"]
    assert "'first'" in str(error) and getattr(error, "other", None) == "first"


def test_partly_overlapping_ranges_on_one_binding_conflict() -> None:
    compiled = config.compile_server(
        "ex01",
        "mail",
        SERVER,
        [
            ("a", _connector(remoteIPRanges=["192.0.2.0-192.0.2.100"])),
            ("b", _connector(remoteIPRanges=["192.0.2.50-192.0.2.200"])),
        ],
    )
    assert "without one containing the other" in str(compiled.rejected["b"])


def test_nested_ranges_and_other_ports_coexist() -> None:
    compiled = config.compile_server(
        "ex01",
        "mail",
        SERVER,
        [
            ("a", _connector()),
            ("b", _connector(remoteIPRanges=["192.0.2.7"])),
            ("c", _connector(bindings=["0.0.0.0:2525"])),
            ("d", _connector(bindings=["192.0.2.1:25"], remoteIPRanges=["192.0.2.0/25"])),
        ],
    )
    assert compiled.rejected == {}


def test_wildcard_and_specific_binding_overlap_is_checked() -> None:
    compiled = config.compile_server(
        "ex01", "mail", SERVER, [("a", _connector()), ("b", _connector(bindings=["192.0.2.1:25"]))]
    )
    assert "already used by connector 'a'" in str(compiled.rejected["b"])


def test_disabled_and_foreign_connectors_are_left_out() -> None:
    compiled = config.compile_server(
        "ex01",
        "mail",
        SERVER,
        [("off", _connector(enabled=False)), ("x", _connector(server="ex02"))],
    )
    assert compiled.config.connectors == () and compiled.rejected == {}


def test_invalid_connector_is_rejected_and_others_keep_working() -> None:
    compiled = config.compile_server(
        "ex01",
        "mail",
        SERVER,
        # Valid on an Edge server; on a Mailbox server the default inactivity (300) is longer.
        [("bad", _connector(connectionTimeoutSeconds=200)), ("good", _connector())],
    )
    assert [c.name for c in compiled.config.connectors] == ["good"]
    assert compiled.rejected["bad"].field == "spec.connectionInactivityTimeoutSeconds"


def test_deny_wins_over_every_grant() -> None:
    acl = permissions.resolve(
        [PermissionGroup.ExchangeUsers],
        [
            permissions.Entry(
                "bob", frozenset({Permission.AcceptAnyRecipient}), PermissionAccess.Deny
            )
        ],
    )
    users = Principal.AuthenticatedUsers.value
    assert Permission.AcceptAnyRecipient in acl.effective([users, "alice"])
    assert Permission.AcceptAnyRecipient not in acl.effective([users, "bob"])
    assert Permission.Submit in acl.effective([users, "bob"])


def test_allow_entry_adds_and_remove_entry_takes_away_a_group_right() -> None:
    anonymous = Principal.AnonymousLogon.value
    acl = permissions.resolve(
        [PermissionGroup.AnonymousUsers],
        [
            permissions.Entry(anonymous, frozenset({Permission.AcceptAnyRecipient})),
            permissions.Entry(
                anonymous, frozenset({Permission.AcceptAnySender}), PermissionAccess.Remove
            ),
        ],
    )
    effective = acl.effective([anonymous])
    assert Permission.AcceptAnyRecipient in effective
    assert Permission.AcceptAnySender not in effective
    assert acl.denies == {}


def test_compiled_connector_carries_resolved_defaults() -> None:
    compiled = config.compile_server(
        "ex01", "mail", SERVER, [("a", _connector(fqdn="mx.contoso.com"))]
    )
    connector = compiled.config.connectors[0]
    assert connector.banner == "220 mx.contoso.com ESMTP smtpgate ready"
    assert connector.limits.connection_timeout_seconds == 600
    assert connector.tls is None and not connector.starttls_available
    assert connector.acl.effective([Principal.AnonymousLogon.value]) == frozenset()


@pytest.mark.parametrize(
    ("exposure", "mode"),
    [
        ({}, "Off"),
        ({"trustedProxyRanges": ["10.0.0.0/8"]}, "Required"),
        ({"trustedProxyRanges": ["10.0.0.0/8"], "proxyProtocol": "Optional"}, "Optional"),
        ({"trustedProxyRanges": ["10.0.0.0/8"], "proxyProtocol": "Off"}, "Off"),
    ],
)
def test_proxy_protocol_is_required_from_listed_trusted_proxies_unless_said(
    exposure: dict[str, object], mode: str
) -> None:
    server = specs.TransportServerSpec.model_validate(
        {"fqdn": "ex01.contoso.com", "exposure": exposure}
    )
    compiled = config.compile_server("ex01", "mail", server, [])
    assert compiled.config.proxy_protocol == mode


def test_proxy_protocol_without_trusted_proxies_is_refused() -> None:
    with pytest.raises(ValueError, match="need trustedProxyRanges"):
        specs.TransportServerSpec.model_validate(
            {"fqdn": "ex01.contoso.com", "exposure": {"proxyProtocol": "Optional"}}
        )


def test_config_written_before_proxy_protocol_still_loads_as_off() -> None:
    text = config.compile_server("ex01", "mail", SERVER, []).config.to_json()
    assert '"proxyProtocol": "Off"' in text
    old = text.replace(',\n  "proxyProtocol": "Off"', "")
    assert "proxyProtocol" not in old
    loaded = config.ServerConfig.from_json(old)
    assert loaded.proxy_protocol == "Off"


def test_only_trusted_peers_are_proxies_and_only_when_the_mode_is_on() -> None:
    server = specs.TransportServerSpec.model_validate(
        {"fqdn": "ex01.contoso.com", "exposure": {"trustedProxyRanges": ["10.0.0.0/8"]}}
    )
    on = config.compile_server("ex01", "mail", server, []).config
    assert on.trusted_proxy(ranges.parse_address("10.1.2.3"))
    assert on.trusted_proxy(ranges.parse_address("::ffff:10.1.2.3"))
    assert not on.trusted_proxy(ranges.parse_address("192.0.2.1"))
    off = on.model_copy(update={"proxy_protocol": "Off"})
    assert not off.trusted_proxy(ranges.parse_address("10.1.2.3"))


def test_a_copy_with_other_fields_chooses_and_parses_from_its_own_fields() -> None:
    # connector_for remembers its answers and the parsed ranges are cached on the model;
    # a copy with fields replaced (a reloaded config made that way) must not answer from
    # what the original remembered.
    server = specs.TransportServerSpec.model_validate(
        {"fqdn": "ex01.contoso.com", "exposure": {"trustedProxyRanges": ["10.0.0.0/8"]}}
    )
    original = config.compile_server("ex01", "mail", server, [("partner", _connector())]).config
    local, client = ranges.parse_address("192.0.2.25"), ranges.parse_address("192.0.2.7")
    proxy = ranges.parse_address("10.1.2.3")
    assert original.connector_for(local, 25, client) is original.connectors[0]
    assert original.parsed_trusted_proxy_ranges[0].contains(proxy)
    partner = original.connectors[0]
    assert partner.parsed_ranges[0].contains(client)

    emptied = original.model_copy(update={"connectors": ()})
    assert emptied.connector_for(local, 25, client) is None
    moved = partner.model_copy(update={"remote_ip_ranges": ("198.51.100.0/24",)})
    assert not moved.parsed_ranges[0].contains(client)
    elsewhere = original.model_copy(update={"connectors": (moved,)})
    assert elsewhere.connector_for(local, 25, client) is None
    untrusting = original.model_copy(
        update={"trusted_proxy_ranges": (), "proxy_protocol": "Required"}
    )
    assert not untrusting.trusted_proxy(proxy)
    # The original still answers from its own fields, and copies compare as their fields do.
    assert original.connector_for(local, 25, client) is partner
    assert original.model_copy() == original and emptied != original


def test_effective_rights_are_remembered_per_principal_set_and_bounded() -> None:
    acl = permissions.Acl(
        grants={
            "A": frozenset({Permission.Submit}),
            "B": frozenset({Permission.AcceptAnyRecipient}),
        },
        denies={"B": frozenset({Permission.Submit})},
    )
    assert acl.effective(frozenset({"A"})) == {Permission.Submit}
    assert acl.effective(frozenset({"A", "B"})) == {Permission.AcceptAnyRecipient}
    assert acl.effective(frozenset({"A"})) == {Permission.Submit}  # not the other set's
    assert acl.effective(["A", "B"]) == {Permission.AcceptAnyRecipient}  # not a set: worked out
    for n in range(permissions.EFFECTIVE_KEPT * 2):
        acl.effective(frozenset({f"user{n}"}))
    assert len(acl._memo) <= permissions.EFFECTIVE_KEPT
    assert acl == permissions.Acl(grants=acl.grants, denies=acl.denies)  # the memo is no part
