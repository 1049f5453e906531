"""Which principals a Kerberos identity holds on a connector, and what Integrated and
ExchangeServer offer."""

from __future__ import annotations

import pytest
from smtpgate.connectors import kerberos
from smtpgate.connectors.enums import AuthMechanism as M
from smtpgate.connectors.enums import Principal, ServerRole

CONFIG = kerberos.KerberosConfig(
    keytab_file="/k",
    realm="CONTOSO.COM",
    service_principals=("SMTP/ex01.contoso.com@CONTOSO.COM",),
    servers={
        "SMTP/ex02.contoso.com@CONTOSO.COM": ServerRole.Mailbox,
        "SMTP/edge01.contoso.com@CONTOSO.COM": ServerRole.Edge,
    },
)
USERS = frozenset({Principal.AuthenticatedUsers.value})


def test_realm_user_is_an_authenticated_user_with_integrated() -> None:
    name, held = kerberos.principals_for(CONFIG, (M.Integrated,), "alice@CONTOSO.COM", False) or (
        "",
        None,
    )
    assert name == "alice" and held == USERS | {"alice"}


@pytest.mark.parametrize(
    "principal",
    ["alice@FABRIKAM.COM", "HTTP/web.contoso.com@CONTOSO.COM", "@CONTOSO.COM"],
)
def test_other_realms_and_services_are_nobody(principal: str) -> None:
    assert (
        kerberos.principals_for(CONFIG, (M.Integrated, M.ExchangeServer), principal, False) is None
    )


def test_organisation_server_is_its_role_with_exchange_server() -> None:
    found = kerberos.principals_for(
        CONFIG, (M.ExchangeServer,), "SMTP/ex02.contoso.com@CONTOSO.COM", True
    )
    assert found is not None
    assert found[1] == {Principal.ExchangeServers.value, Principal.HubTransportServers.value}
    edge = kerberos.principals_for(
        CONFIG, (M.ExchangeServer,), "SMTP/edge01.contoso.com@CONTOSO.COM", True
    )
    assert edge is not None and edge[1] == {Principal.EdgeTransportServers.value}


def test_server_without_exchange_server_mechanism_is_nobody() -> None:
    assert (
        kerberos.principals_for(CONFIG, (M.Integrated,), "SMTP/ex02.contoso.com@CONTOSO.COM", False)
        is None
    )


def test_users_cannot_use_exchange_server_authentication() -> None:
    assert (
        kerberos.principals_for(CONFIG, (M.Integrated, M.ExchangeServer), "alice@CONTOSO.COM", True)
        is None
    )
    assert kerberos.principals_for(CONFIG, (M.ExchangeServer,), "alice@CONTOSO.COM", False) is None


@pytest.mark.parametrize(
    ("mechanisms", "available", "auth", "exps"),
    [
        (
            (M.TLS, M.BasicAuth, M.BasicAuthRequireTLS, M.Integrated),
            {"GSSAPI", "NTLM"},
            ["GSSAPI", "NTLM"],
            [],
        ),
        (
            (M.TLS, M.ExchangeServer, M.Integrated),
            {"GSSAPI", "NTLM"},
            ["GSSAPI", "NTLM"],
            ["GSSAPI"],
        ),
        ((M.ExchangeServer,), {"GSSAPI", "NTLM"}, ["GSSAPI"], ["GSSAPI"]),
        ((M.TLS, M.BasicAuth), {"GSSAPI", "NTLM"}, [], []),
        ((M.Integrated, M.ExchangeServer), {"NTLM"}, ["NTLM"], []),
        ((M.Integrated, M.ExchangeServer), set(), [], []),
    ],
)
def test_offered_mechanisms(
    mechanisms: tuple[M, ...], available: set[str], auth: list[str], exps: list[str]
) -> None:
    assert kerberos.sasl_mechanisms(mechanisms, frozenset(available)) == auth
    assert kerberos.exps_mechanisms(mechanisms, frozenset(available)) == exps


SERVER = {
    "fqdn": "ex01.contoso.com",
    "kerberos": {
        "realm": "CONTOSO.COM",
        "servicePrincipals": ["SMTP/ex01.contoso.com", "smtp/ex01.contoso.com@CONTOSO.COM"],
        "keytabSecretRef": {"name": "ex01-keytab", "key": "krb5.keytab"},
    },
    "ntlm": {"hashesSecretRef": {"name": "users", "key": "ntlm"}, "domain": "CONTOSO"},
}


def test_kerberos_spec_compiles_into_the_server_config() -> None:
    from smtpgate.connectors import config, specs

    spec = specs.TransportServerSpec.model_validate(SERVER)
    assert spec.kerberos is not None
    compiled = config.compile_server(
        "ex01",
        "mail",
        spec,
        [],
        kerberos=kerberos.compile_kerberos(
            spec.kerberos, {"SMTP/ex02.contoso.com@CONTOSO.COM": ServerRole.Edge}
        ),
        ntlm=kerberos.compile_ntlm(spec.ntlm),
    ).config
    again = config.ServerConfig.from_json(compiled.to_json())
    assert again == compiled
    assert again.kerberos is not None and again.kerberos.service_principals == (
        "SMTP/ex01.contoso.com@CONTOSO.COM",
        "smtp/ex01.contoso.com@CONTOSO.COM",
    )
    assert again.ntlm == kerberos.NtlmConfig(
        hashes_file="/etc/smtpgate/ntlm/ntlm", domain="CONTOSO"
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"realm": "contoso.com"}, "realm"),
        ({"servicePrincipals": ["alice"]}, "servicePrincipals"),
        ({"servicePrincipals": []}, "servicePrincipals"),
        ({"password": "secret"}, "password"),
    ],
)
def test_invalid_kerberos_specs_are_refused(change: dict[str, object], field: str) -> None:
    from pydantic import ValidationError
    from smtpgate.connectors import specs

    data = {**SERVER, "kerberos": {**SERVER["kerberos"], **change}}  # type: ignore[dict-item]
    with pytest.raises(ValidationError) as refused:
        specs.TransportServerSpec.model_validate(data)
    assert field in str(refused.value)


def test_missing_credentials_name_what_is_not_offered() -> None:
    assert kerberos.missing_credentials((M.TLS, M.BasicAuth), False, False) is None
    assert kerberos.missing_credentials((M.Integrated,), True, True) == []
    assert kerberos.missing_credentials((M.Integrated,), False, False) == [
        "GSSAPI (spec.kerberos)",
        "NTLM (spec.ntlm)",
    ]
    assert kerberos.missing_credentials((M.ExchangeServer,), False, False) == [
        "GSSAPI (spec.kerberos)"
    ]
