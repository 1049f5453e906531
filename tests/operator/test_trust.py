"""The organisation as the operator resolves it, the self-signed certificate's life, and
what a connector can do with TLS identities: pure, no apiserver."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from smtpgate.connectors import config, organization, specs
from smtpgate.connectors.config import TlsFiles
from smtpgate.connectors.enums import TrustedServerRole
from smtpgate.operator import certs, trust

from hack.pki import Authority

NOW = dt.datetime.now(dt.UTC)
TLS = TlsFiles(cert_file="c", key_file="k", source="s", not_after="2030-01-01T00:00:00Z")
FULL = organization.Organization(
    domain="CONTOSO",
    domain_secure_domains=("fabrikam.com",),
    partner_trust_anchors=(Authority("Fabrikam CA").pem().decode(),),
)


def _connector(spec: dict[str, Any], tls: bool = True) -> config.ConnectorConfig:
    parsed = specs.ReceiveConnectorSpec.model_validate({"server": "ex01", **spec})
    compiled = config.compile_server(
        "ex01",
        "mail",
        specs.TransportServerSpec(fqdn="ex01.contoso.com"),
        [("c", parsed)],
        tls={"c": TLS} if tls else {},
    )
    return compiled.config.connectors[0]


PARTNER = {"usage": "Partner", "bindings": ["0.0.0.0:25"], "remoteIPRanges": ["10.0.0.0/8"]}


@pytest.mark.parametrize(
    ("spec", "tls", "org", "blocked"),
    [
        (PARTNER, True, FULL, "NobodyCanSubmit"),  # no domain security: nobody is a partner
        ({**PARTNER, "domainSecureEnabled": True}, True, FULL, None),
        (
            {**PARTNER, "domainSecureEnabled": True},
            True,
            organization.Organization(domain="X"),
            "NobodyCanSubmit",
        ),
        ({**PARTNER, "domainSecureEnabled": True}, False, FULL, "NobodyCanSubmit"),
        (
            {"usage": "Internet", "bindings": ["0.0.0.0:25"], "requireTLS": True},
            False,
            FULL,
            "NoCertificate",
        ),
        ({"usage": "Internet", "bindings": ["0.0.0.0:25"], "requireTLS": True}, True, FULL, None),
        ({"usage": "Internal"}, True, FULL, None),  # the organisation's servers, by certificate
        (
            {"usage": "Internal", "authMechanisms": ["TLS", "ExchangeServer"]},
            False,
            FULL,
            "NobodyCanSubmit",
        ),
        (
            {"usage": "Custom", "bindings": ["0.0.0.0:25"], "remoteIPRanges": ["10.0.0.0/8"]},
            True,
            FULL,
            "NobodyCanSubmit",
        ),
    ],
)
def test_a_connector_nobody_can_submit_to_is_not_ready(
    spec: dict[str, Any], tls: bool, org: organization.Organization, blocked: str | None
) -> None:
    _, reason, message = trust.connector_conditions(_connector(spec, tls), org, 1)
    assert reason == blocked, message


@pytest.mark.parametrize(
    ("org", "tls", "status", "reason"),
    [
        (FULL, True, "True", "Enabled"),
        (organization.Organization(domain="X"), True, "False", "NoDomainSecureList"),
        (
            FULL.model_copy(update={"partner_trust_anchors": ()}),
            True,
            "False",
            "NoPartnerTrustAnchors",
        ),
        (FULL, False, "False", "NoCertificate"),
    ],
)
def test_domain_secure_condition_says_why_it_cannot_work(
    org: organization.Organization, tls: bool, status: str, reason: str
) -> None:
    conditions, _, _ = trust.connector_conditions(
        _connector({**PARTNER, "domainSecureEnabled": True}, tls), org, 1
    )
    cond = next(c for c in conditions if c["type"] == "DomainSecure")
    assert (cond["status"], cond["reason"]) == (status, reason)


def test_direct_trust_condition_without_a_certificate() -> None:
    conditions, _, _ = trust.connector_conditions(_connector({"usage": "Internal"}, False), FULL, 1)
    cond = next(c for c in conditions if c["type"] == "DirectTrust")
    assert (cond["status"], cond["reason"]) == ("False", "NoCertificate")


def _server(name: str, role: str = "Mailbox") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"fqdn": f"{name}.contoso.com", "role": role}}


def test_every_servers_self_signed_certificate_and_the_listed_ones_are_trusted() -> None:
    ex01 = certs.issue("ex01", "ex01.contoso.com", NOW, certs.DEFAULT_VALIDITY)
    edge = certs.issue("edge01", "edge01.contoso.com", NOW, certs.DEFAULT_VALIDITY)
    legacy = certs.issue("legacy01", "legacy01.contoso.com", NOW, certs.DEFAULT_VALIDITY)
    secret = certs.secret_body("edge01", "mail", {}, edge, {})
    secret["metadata"]["name"] = "edge01-receiver-self-signed"
    configs = [
        {
            "metadata": {"name": "org", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "domain": "CONTOSO",
                "externalServers": [
                    {
                        "name": "legacy01",
                        "role": "Legacy",
                        "certificate": {"pem": legacy.crt.decode()},
                    },
                    {
                        "name": "gone",
                        "role": "Edge",
                        "certificate": {"configMapRef": {"name": "x"}},
                    },
                ],
                "partnerTrustAnchors": [{"configMapRef": {"name": "anchors"}}],
            },
        },
        {"metadata": {"name": "later", "creationTimestamp": "2026-02-01T00:00:00Z"}, "spec": {}},
    ]
    referenced = {
        ("ConfigMap", "anchors"): {"data": {"ca.crt": Authority("Fabrikam CA").pem().decode()}},
        ("ConfigMap", "x"): None,
    }
    assert trust.references(configs) == {("ConfigMap", "anchors"), ("ConfigMap", "x")}
    out = trust.resolve(
        "mail",
        [_server("ex01"), _server("edge01", "Edge")],
        configs,
        [secret],
        {"ex01": ex01},
        referenced,
    )
    roles = {t.name: t.role for t in out.org.trusted_servers}
    assert roles == {
        "ex01": TrustedServerRole.Mailbox,
        "edge01": TrustedServerRole.Edge,
        "legacy01": TrustedServerRole.Legacy,
    }
    assert len(out.org.partner_trust_anchors) == 1
    assert out.status["org"]["conditions"][0]["reason"] == "InvalidReference"
    assert "ConfigMap x not found" in out.status["org"]["conditions"][0]["message"]
    assert out.status["later"]["conditions"][0]["reason"] == "Duplicate"


def test_self_signed_certificate_is_renewed_with_a_third_of_its_life_left() -> None:
    made = certs.issue("ex01", "ex01.contoso.com", NOW, dt.timedelta(seconds=30))
    assert certs.usable(made, "ex01.contoso.com", NOW)
    assert not certs.usable(made, "ex01.contoso.com", NOW + dt.timedelta(seconds=21))
    assert not certs.usable(made, "mail.contoso.com", NOW)  # the FQDN changed: a new one
    body = certs.secret_body("ex01", "mail", {"name": "ex01"}, made, {})
    again = certs.read_self_signed(body)
    assert again is not None and again.crt == made.crt
    assert base64.b64decode(body["data"]["tls.key"]) == made.key
    assert certs.is_self_signed(body)
    assert certs.candidates([body]) == []  # never a candidate for another connector


def test_settings_without_effect_are_named_in_a_condition() -> None:
    raw = {
        **PARTNER,
        "usage": "Internet",
        "chunkingEnabled": True,
        "messageRateLimit": 10,
        "messageRateSource": "User",
    }
    conditions = trust.inert_settings(raw, _connector(raw), 3)
    assert [c["type"] for c in conditions] == ["Effective"]
    assert conditions[0]["status"] == "False"
    assert "chunkingEnabled" in conditions[0]["message"]
    assert "messageRateSource User" in conditions[0]["message"]
    assert trust.inert_settings(PARTNER, _connector(PARTNER), 3) == []
