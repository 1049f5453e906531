"""Every server's self-signed certificate, made and renewed by the operator, and the
organisation's trusted server certificates published into every server's config, on the
real apiserver."""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hack.controlplane.processes import Operator
from hack.pki import Authority, self_signed, tls_secret

from ..kube_helpers import condition, eventually, get, receiver_config


def _apply(controlplane: Any, *bodies: dict[str, Any]) -> None:
    controlplane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(bodies)}),
    )


def _server(ns: str, name: str, fqdn: str, role: str = "Mailbox") -> dict[str, Any]:
    return {
        "apiVersion": "smtpgate.io/v1alpha1",
        "kind": "TransportServer",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"fqdn": fqdn, "role": role},
    }


def _sha256(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _self_signed(controlplane: Any, ns: str, server: str) -> tuple[dict[str, Any], bytes]:
    secret = get(controlplane, "secret", f"{server}-receiver-self-signed", ns)
    return secret, base64.b64decode(secret["data"]["tls.crt"])


def _with(
    controlplane: Any, kind: str, name: str, ns: str, cond: str, reason: str
) -> dict[str, Any] | None:
    """The object once its condition ``cond`` has ``reason``, else None."""
    body = get(controlplane, kind, name, ns)
    return body if condition(body, cond).get("reason") == reason else None


def _trusted(controlplane: Any, ns: str, server: str) -> dict[str, tuple[str, str]]:
    org = receiver_config(controlplane, ns, server).get("organization") or {}
    return {t["name"]: (t["role"], t["sha256"]) for t in org.get("trustedServers", [])}


def test_each_server_gets_a_self_signed_certificate_trusted_by_every_server(
    controlplane: Any, operator: Any, ns: str
) -> None:
    legacy_pem, _ = self_signed("legacy01.contoso.com", ["legacy01.contoso.com"])
    relay_pem, relay_key = self_signed("relay.contoso.com", ["relay.contoso.com"])
    _apply(
        controlplane,
        _server(ns, "ex01", "ex01.contoso.com"),
        _server(ns, "edge01", "edge01.contoso.com", "Edge"),
        tls_secret("relay-cert", ns, relay_pem, relay_key),
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "TransportConfig",
            "metadata": {"name": "contoso", "namespace": ns},
            "spec": {
                "domain": "CONTOSO",
                "externalServers": [
                    {
                        "name": "legacy01",
                        "role": "Legacy",
                        "certificate": {"pem": legacy_pem.decode()},
                    },
                    {
                        "name": "relay",
                        "role": "Mailbox",
                        "certificate": {"secretRef": {"name": "relay-cert"}},
                    },
                ],
            },
        },
    )

    def published() -> bool:
        try:
            ex01 = _self_signed(controlplane, ns, "ex01")[1]
            edge01 = _self_signed(controlplane, ns, "edge01")[1]
        except AssertionError:
            return False
        want = {
            "ex01": ("Mailbox", _sha256(ex01)),
            "edge01": ("Edge", _sha256(edge01)),
            "legacy01": ("Legacy", _sha256(legacy_pem)),
            "relay": ("Mailbox", _sha256(relay_pem)),
        }
        return all(_trusted(controlplane, ns, s) == want for s in ("ex01", "edge01"))

    eventually(published, what="every certificate in both servers' configs")
    secret, pem = _self_signed(controlplane, ns, "ex01")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["ownerReferences"][0]["name"] == "ex01"
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.issuer == cert.subject  # self-signed
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "ex01.contoso.com" in names.get_values_for_type(x509.DNSName)

    # The server's connectors serve it (nothing else is chosen) and offer Direct Trust.
    server = get(controlplane, "tsrv", "ex01", ns)
    assert server["status"]["selfSignedCertificate"]["sha256"] == _sha256(pem)
    connector = eventually(
        lambda: _with(controlplane, "rcvc", "default-ex01", ns, "CertificateReady", "SelfSigned"),
        what="the default connector to serve the self-signed certificate",
    )
    assert connector["status"]["certificate"]["secretName"] == "ex01-receiver-self-signed"
    assert condition(connector, "DirectTrust")["status"] == "True"
    principals = {row["principal"] for row in connector["status"]["effectivePermissions"]}
    assert {"CONTOSO\\Exchange Servers", "CONTOSO\\ExchangeLegacyInterop"} <= principals
    assert "<Domain>\\Exchange Servers" not in principals
    config = receiver_config(controlplane, ns, "ex01")
    delivery = next(c for c in config["connectors"] if c["name"].startswith("mailbox-delivery"))
    assert delivery["tls"]["source"] == "ex01-receiver-self-signed"

    # Each server's own certificate joins the list once its Secret is made: wait for all.
    servers = {"ex01", "edge01", "legacy01", "relay"}
    tcfg = eventually(
        lambda: (
            body
            if (body := _with(controlplane, "tcfg", "contoso", ns, "Ready", "Resolved"))
            and {t["name"] for t in body["status"]["trustedServers"]} >= servers
            else None
        ),
        what="the TransportConfig's status with every server trusted",
    )
    assert tcfg["status"]["domain"] == "CONTOSO"
    assert {t["name"] for t in tcfg["status"]["trustedServers"]} == servers

    # A server removed: its certificate leaves the others' configs.
    controlplane.kubectl("delete", "tsrv", "edge01", "-n", ns)
    eventually(
        lambda: "edge01" not in _trusted(controlplane, ns, "ex01"),
        what="the removed server's certificate to leave ex01's config",
    )


def test_a_missing_certificate_reference_is_reported_on_the_transport_config(
    controlplane: Any, operator: Any, ns: str
) -> None:
    _apply(
        controlplane,
        _server(ns, "ex01", "ex01.contoso.com"),
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "TransportConfig",
            "metadata": {"name": "contoso", "namespace": ns},
            "spec": {
                "externalServers": [
                    {"name": "gone", "role": "Edge", "certificate": {"secretRef": {"name": "nope"}}}
                ]
            },
        },
    )
    tcfg = eventually(
        lambda: _with(controlplane, "tcfg", "contoso", ns, "Ready", "InvalidReference"),
        what="the TransportConfig to say the Secret is missing",
    )
    assert "nope" in condition(tcfg, "Ready")["message"]
    assert tcfg["status"]["domain"] == ns.upper()


def test_the_transport_config_crd_refuses_a_source_with_both_pem_and_secret(
    controlplane: Any, ns: str
) -> None:
    done = controlplane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "smtpgate.io/v1alpha1",
                "kind": "TransportConfig",
                "metadata": {"name": "bad", "namespace": ns},
                "spec": {
                    "partnerTrustAnchors": [
                        {"pem": Authority("X").pem().decode(), "secretRef": {"name": "ca"}}
                    ]
                },
            }
        ),
        check=False,
    )
    assert done.returncode != 0
    assert "exactly one of pem, secretRef and configMapRef must be given" in done.stderr


def test_self_signed_certificate_is_renewed_before_it_expires(
    controlplane: Any, operator: Any, ns: str, tmp_path: pathlib.Path
) -> None:
    """Time compressed: an operator whose self-signed certificates last 30 s renews them
    after 20 s, and the new one reaches the server's config before the old one expires."""
    short = Operator(
        controlplane.kubeconfig,
        tmp_path / "short.log",
        lease_namespace=ns,
        namespaces=[ns],
        extra=["--self-signed-validity-seconds", "30"],
    )
    operator.stop()  # one operator at a time: this one's certificates are the short-lived
    try:
        short.start()
        _apply(controlplane, _server(ns, "ex01", "ex01.contoso.com"))
        first = eventually(
            lambda: _self_signed(controlplane, ns, "ex01")[1], what="the first certificate"
        )
        first_cert = x509.load_pem_x509_certificate(first)
        lifetime = first_cert.not_valid_after_utc - first_cert.not_valid_before_utc
        assert 29 <= lifetime.total_seconds() <= 31

        def renewed() -> bytes | None:
            pem = _self_signed(controlplane, ns, "ex01")[1]
            return pem if pem != first else None

        second = eventually(renewed, timeout=40, what="the renewed certificate")
        second_cert = x509.load_pem_x509_certificate(second)
        assert second_cert.not_valid_before_utc < first_cert.not_valid_after_utc
        eventually(
            lambda: _trusted(controlplane, ns, "ex01").get("ex01", ("", ""))[1] == _sha256(second),
            timeout=20,
            what="the renewed certificate in the config",
        )
    finally:
        short.stop()
        operator.start()
