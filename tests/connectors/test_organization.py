"""The organisation model: TransportConfig specs, principals by role with <Domain> resolved,
Direct Trust by exact certificate, and partner certificates: chain, validity, names."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from smtpgate.connectors import config, organization, specs
from smtpgate.connectors.enums import TrustedServerRole
from smtpgate.connectors.errors import SpecError

from hack.pki import Authority, self_signed

NOW = dt.datetime.now(dt.UTC)
CA = Authority("Fabrikam CA", "Fabrikam")


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("role", "principals"),
    [
        (
            TrustedServerRole.Mailbox,
            {"CONTOSO\\Exchange Servers", "MS Exchange\\Hub Transport Servers"},
        ),
        (TrustedServerRole.Edge, {"MS Exchange\\Edge Transport Servers"}),
        (TrustedServerRole.Legacy, {"CONTOSO\\ExchangeLegacyInterop"}),
    ],
)
def test_each_role_holds_its_principals_with_the_domain_resolved(
    role: TrustedServerRole, principals: set[str]
) -> None:
    assert organization.role_principals(role, "CONTOSO") == principals


def test_the_compiled_access_list_names_the_organisations_domain() -> None:
    server = specs.TransportServerSpec(fqdn="ex01.contoso.com")
    connector = specs.ReceiveConnectorSpec.model_validate(
        {
            "server": "ex01",
            "usage": "Internal",
            "permissions": [
                {
                    "principal": "<Domain>\\Exchange Servers",
                    "extendedRights": ["ms-Exch-SMTP-Submit"],
                    "access": "Deny",
                }
            ],
        }
    )
    compiled = config.compile_server(
        "ex01",
        "mail",
        server,
        [("internal", connector)],
        org=organization.Organization(domain="CONTOSO"),
    )
    acl = compiled.config.connectors[0].acl
    assert (
        "CONTOSO\\Exchange Servers" in acl.grants and "CONTOSO\\ExchangeLegacyInterop" in acl.grants
    )
    assert acl.denies == {"CONTOSO\\Exchange Servers": frozenset({"ms-Exch-SMTP-Submit"})}
    assert not any(p.startswith("<Domain>") for p in acl.grants)
    # Without a TransportConfig the namespace in capitals is the domain.
    default = config.compile_server("ex01", "mail", server, [("internal", connector)])
    assert "MAIL\\Exchange Servers" in default.config.connectors[0].acl.grants


def test_direct_trust_matches_the_exact_certificate_valid_now() -> None:
    pem, _ = self_signed("ex02.contoso.com", ["ex02.contoso.com"])
    other, _ = self_signed("ex02.contoso.com", ["ex02.contoso.com"])  # same names, other key
    cert = x509.load_pem_x509_certificate(pem)
    servers = (organization.trusted("ex02", TrustedServerRole.Mailbox, cert),)
    assert organization.direct_trust(_der(pem), servers, NOW) == servers[0]
    assert organization.direct_trust(_der(other), servers, NOW) is None
    assert organization.direct_trust(_der(pem), servers, NOW + dt.timedelta(days=61)) is None


@pytest.mark.parametrize(
    ("names", "domain", "named"),
    [
        (["fabrikam.com"], "fabrikam.com", True),
        (["FABRIKAM.com."], "fabrikam.com", True),
        (["*.fabrikam.com"], "eu.fabrikam.com", True),
        (["*.fabrikam.com"], "fabrikam.com", False),
        (["*.fabrikam.com"], "a.eu.fabrikam.com", False),
        (["mail.fabrikam.com"], "fabrikam.com", False),
        (["fabrikam.com.evil.example"], "fabrikam.com", False),
    ],
)
def test_partner_certificate_names_the_domain_by_rfc_6125_rules(
    names: list[str], domain: str, named: bool
) -> None:
    pem, _ = CA.issue(names[0], names)
    assert organization.names_domain(x509.load_pem_x509_certificate(pem), domain) is named


def test_partner_certificate_must_chain_to_an_anchor_and_be_valid() -> None:
    anchors = [CA.cert]
    good, _ = CA.issue("fabrikam.com", ["fabrikam.com"])
    assert organization.partner_verified(_der(good), anchors, "fabrikam.com", NOW) is None
    stranger, _ = Authority("Fabrikam CA", "Fabrikam").issue("fabrikam.com", ["fabrikam.com"])
    assert "does not chain" in str(
        organization.partner_verified(_der(stranger), anchors, "fabrikam.com", NOW)
    )
    expired, _ = CA.issue("fabrikam.com", ["fabrikam.com"], (-10, -1))
    assert "expired" in str(
        organization.partner_verified(_der(expired), anchors, "fabrikam.com", NOW)
    )
    assert (
        organization.partner_verified(None, anchors, "fabrikam.com", NOW) == "no client certificate"
    )
    # A self-signed leaf is no authority even when listed as an anchor.
    leaf, _ = self_signed("fabrikam.com", ["fabrikam.com"])
    leaf_cert = x509.load_pem_x509_certificate(leaf)
    assert organization.partner_verified(_der(leaf), [leaf_cert], "fabrikam.com", NOW) is not None


def test_domain_secure_list_takes_subdomains_only_with_a_wildcard() -> None:
    patterns = ("fabrikam.com", "*.tailspin.example")
    assert organization.in_list("FABRIKAM.com", patterns) == "fabrikam.com"
    assert organization.in_list("eu.fabrikam.com", patterns) is None
    assert organization.in_list("eu.tailspin.example", patterns) == "*.tailspin.example"
    assert organization.in_list("tailspin.example", patterns) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"partnerTrustAnchors": [{}]}, "exactly one of pem, secretRef and configMapRef"),
        ({"partnerTrustAnchors": [{"pem": "not a certificate"}]}, "must hold a PEM certificate"),
        ({"domain": "CON TOSO"}, "must be a domain name"),
        ({"externalServers": [{"name": "x", "role": "Hub", "certificate": {"pem": "x"}}]}, "role"),
        ({"tlsReceiveDomainSecureList": ["not a domain!"]}, "must be a domain"),
        ({"realm": "CONTOSO.COM"}, "is not a known field"),
    ],
)
def test_transport_config_refuses_what_it_cannot_use(spec: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as err:
        specs.parse_spec(organization.TransportConfigSpec, spec)
    assert message in str(err.value)


def test_server_config_without_an_organisation_loads_as_before() -> None:
    server = specs.TransportServerSpec(fqdn="ex01.contoso.com")
    compiled = config.compile_server("ex01", "mail", server, [])
    document = compiled.config.model_dump(by_alias=True, mode="json")
    del document["organization"]
    loaded = config.ServerConfig.model_validate(document)
    assert loaded.organization.trusted_servers == () and loaded.organization.domain == ""
