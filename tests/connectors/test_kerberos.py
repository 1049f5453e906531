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
