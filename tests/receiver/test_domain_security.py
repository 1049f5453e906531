"""Domain security (mutual TLS with partner domains) on a Partner connector, as
examples/05-partner-connector.yaml sets it up: a partner MTA (Postfix, openssl s_client)
whose certificate chains to a partner trust anchor and names its domain delivers; the same
domain without such a certificate gets a transient refusal, never an anonymous session."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import pytest
import yaml
from smtpgate.connectors import organization
from smtpgate.receiver import replies

from hack.pki import Authority

from . import postfix_client
from .conftest import Running
from .test_direct_trust import Peer, s_client

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "05-partner-connector.yaml"
FABRIKAM_CA = Authority("Fabrikam Issuing CA", "Fabrikam")
OTHER_CA = Authority("Somebody Else CA")


def _line(reply: replies.Reply) -> str:
    return reply.line()


def _partner_connector() -> list[tuple[str, dict[str, Any]]]:
    """examples/05's connector, moved onto loopback (its remote range is the partner's)."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    spec = next(d for d in docs if d["kind"] == "ReceiveConnector")["spec"]
    data = {k: v for k, v in spec.items() if k not in ("server", "tlsCertificateName")}
    data.update(bindings=["0.0.0.0:25"], remoteIPRanges=["127.0.0.0/8"], tarpitIntervalSeconds=0)
    return [("partner-fabrikam", data)]


def _example_org() -> organization.Organization:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    spec = next(d for d in docs if d["kind"] == "TransportConfig")["spec"]
    return organization.Organization(
        domain="CONTOSO",
        domain_secure_domains=tuple(spec["tlsReceiveDomainSecureList"]),
        partner_trust_anchors=(FABRIKAM_CA.pem().decode(),),
    )


def _issue(
    folder: pathlib.Path, ca: Authority, name: str, days: tuple[int, int] = (-1, 30)
) -> Peer:
    cert, key = ca.issue(name, [name], days)
    stem = f"{name.replace('*', 'star')}-{ca.name.rfc4514_string()[:12]}-{days[1]}"
    (folder / f"{stem}.crt").write_bytes(cert)
    (folder / f"{stem}.key").write_bytes(key)
    return Peer(folder / f"{stem}.crt", folder / f"{stem}.key")


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory, pki: Any) -> Any:
    running = Running(
        tmp_path_factory.mktemp("partner"), pki, _partner_connector(), org=_example_org()
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Peer]:
    folder = tmp_path_factory.mktemp("partner-certs")
    return {
        "fabrikam": _issue(folder, FABRIKAM_CA, "fabrikam.com"),
        "wildcard": _issue(folder, FABRIKAM_CA, "*.fabrikam.com"),
        "other-ca": _issue(folder, OTHER_CA, "fabrikam.com"),
        "expired": _issue(folder, FABRIKAM_CA, "fabrikam.com", (-30, -1)),
        "other-name": _issue(folder, FABRIKAM_CA, "tailspin.example"),
    }


CERTIFICATE_FAILURE = _line(replies.domain_secure_certificate("fabrikam.com"))


def test_example_partner_connector_is_domain_secure() -> None:
    connector = _partner_connector()[0][1]
    assert connector["usage"] == "Partner" and connector["domainSecureEnabled"] is True


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")
def test_partner_certificate_naming_the_sender_domain_delivers(
    partner: Running, certs: dict[str, Peer]
) -> None:
    before = len(partner.messages())
    answers = s_client(
        partner.port(25), certs["fabrikam"], "orders@fabrikam.com", "sales@contoso.com"
    )
    assert [a[:3] for a in answers[1:5]] == ["250", "250", "354", "250"], answers
    assert len(partner.messages()) == before + 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")
@pytest.mark.parametrize("who", [None, "other-ca", "expired", "other-name"])
def test_the_domain_without_a_valid_partner_certificate_is_refused_transiently(
    partner: Running, certs: dict[str, Peer], who: str | None
) -> None:
    peer = certs[who] if who else None
    answers = s_client(partner.port(25), peer, "orders@fabrikam.com", "sales@contoso.com")
    assert answers[1] == CERTIFICATE_FAILURE, answers


def test_the_domain_without_tls_is_told_to_start_tls(partner: Running) -> None:
    with partner.client(25) as smtp:
        smtp.ehlo("mx.fabrikam.com")
        code, text = smtp.mail("orders@fabrikam.com")
    assert f"{code} {text.decode()}" == _line(replies.domain_secure_needs_tls("fabrikam.com"))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")
def test_a_wildcard_certificate_names_one_label_below(
    partner: Running, certs: dict[str, Peer]
) -> None:
    # *.fabrikam.com in the list takes eu.fabrikam.com; the wildcard certificate names it,
    # and does not name fabrikam.com itself.
    answers = s_client(partner.port(25), certs["wildcard"], "a@eu.fabrikam.com", "b@contoso.com")
    assert answers[1].startswith("250"), answers
    answers = s_client(partner.port(25), certs["wildcard"], "a@fabrikam.com", "b@contoso.com")
    assert answers[1] == CERTIFICATE_FAILURE, answers


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")
def test_a_sender_outside_the_domain_secure_list_is_not_a_partner(
    partner: Running, certs: dict[str, Peer]
) -> None:
    answers = s_client(partner.port(25), certs["fabrikam"], "a@tailspin.example", "b@contoso.com")
    assert answers[1] == _line(replies.NOT_AUTHENTICATED), answers


@pytest.mark.skipif(not postfix_client.AVAILABLE, reason=postfix_client.REASON)
def test_postfix_partner_mta_with_its_certificate_delivers_and_without_is_deferred(
    partner: Running, certs: dict[str, Peer]
) -> None:
    before = len(partner.messages())
    mta = postfix_client.Postfix(
        partner.port(25), certs["fabrikam"].cert, certs["fabrikam"].key, "mx.fabrikam.com"
    )
    try:
        mta.sendmail("orders@fabrikam.com", "sales@contoso.com", "domain secure")
        line = mta.wait_log(r"status=(sent|deferred|bounced)")
        assert "status=sent" in line, line
    finally:
        mta.stop()
    assert len(partner.messages()) == before + 1
    assert b"Subject: domain secure" in partner.messages()[-1]

    bare = postfix_client.Postfix(partner.port(25), None, None, "mx.fabrikam.com")
    try:
        bare.sendmail("orders@fabrikam.com", "sales@contoso.com", "no certificate")
        line = bare.wait_log(r"status=(sent|deferred|bounced)")
        assert "status=deferred" in line, line
        assert "454 4.7.5 Certificate validation failure" in line
    finally:
        bare.stop()
    assert len(partner.messages()) == before + 1
