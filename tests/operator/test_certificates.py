"""Certificates chosen by issuer and subject from kubernetes.io/tls Secrets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hack.pki import Authority, tls_secret

from ..kube_helpers import condition, eventually, get

CONTOSO_CA = Authority("Contoso CA", "Contoso")
OTHER_CA = Authority("Other CA")
CERT_NAME = "<I>CN=Contoso CA, O=Contoso<S>CN=mail.contoso.com"


def _apply(controlplane: Any, *bodies: dict[str, Any]) -> None:
    controlplane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(bodies)}),
    )


def _server_and_connector(ns: str, cert_name: str = CERT_NAME) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "TransportServer",
            "metadata": {"name": "ex01", "namespace": ns},
            "spec": {"fqdn": "mail.contoso.com", "createDefaultConnectors": False},
        },
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "ReceiveConnector",
            "metadata": {"name": "internet", "namespace": ns},
            "spec": {
                "server": "ex01",
                "usage": "Internet",
                "bindings": ["0.0.0.0:25"],
                "tlsCertificateName": cert_name,
            },
        },
    ]


def _tls_of(controlplane: Any, ns: str) -> Any:
    config = json.loads(get(controlplane, "configmap", "ex01-receiver", ns)["data"]["config.json"])
    return next(c for c in config["connectors"] if c["name"] == "internet")["tls"]


def test_matching_certificate_that_expires_last_is_chosen_and_renewal_is_picked_up(
    controlplane: Any, operator: Any, ns: str
) -> None:
    _apply(
        controlplane,
        tls_secret(
            "older", ns, *CONTOSO_CA.issue("mail.contoso.com", ["mail.contoso.com"], (-5, 20))
        ),
        tls_secret(
            "newer", ns, *CONTOSO_CA.issue("mail.contoso.com", ["mail.contoso.com"], (-5, 60))
        ),
        tls_secret(
            "expired", ns, *CONTOSO_CA.issue("mail.contoso.com", ["mail.contoso.com"], (-90, -1))
        ),
        tls_secret(
            "impostor", ns, *OTHER_CA.issue("mail.contoso.com", ["mail.contoso.com"], (-5, 900))
        ),
        *_server_and_connector(ns),
    )

    def chosen() -> dict[str, Any]:
        body = get(controlplane, "rcvc", "internet", ns)
        assert condition(body, "CertificateReady")["status"] == "True"
        return body["status"]["certificate"]

    certificate = eventually(chosen, what="CertificateReady")
    assert certificate["secretName"] == "newer"
    assert _tls_of(controlplane, ns)["source"] == "newer"
    assert _tls_of(controlplane, ns)["certFile"] == "/etc/smtpgate/tls/newer/tls.crt"
    workload = get(controlplane, "statefulset", "ex01-receiver", ns)
    sources = workload["spec"]["template"]["spec"]["volumes"]
    projected = next(v for v in sources if v["name"] == "tls")["projected"]["sources"]
    # The server's own self-signed certificate is there too: the implicit Mailbox delivery
    # connector serves it.
    assert [s["secret"]["name"] for s in projected] == ["ex01-receiver-self-signed", "newer"]
    template_hash = workload["spec"]["template"]["metadata"]["annotations"][
        "smtpgate.io/mounts-hash"
    ]

    # cert-manager renews in place: the same Secret, a later expiry.
    _apply(
        controlplane,
        tls_secret(
            "newer", ns, *CONTOSO_CA.issue("mail.contoso.com", ["mail.contoso.com"], (0, 120))
        ),
    )
    renewed = eventually(lambda: (c := chosen())["notAfter"] != certificate["notAfter"] and c)
    assert renewed["secretName"] == "newer"
    workload = get(controlplane, "statefulset", "ex01-receiver", ns)
    # The kubelet swaps the mounted files; the pods are not restarted.
    assert (
        workload["spec"]["template"]["metadata"]["annotations"]["smtpgate.io/mounts-hash"]
        == template_hash
    )


@pytest.mark.parametrize(
    ("secrets", "cert_name", "reason"),
    [
        (
            [("s1", OTHER_CA, "mail.contoso.com", ["mail.contoso.com"], (-1, 30))],
            CERT_NAME,
            "IssuerNotFound",
        ),
        (
            [("s1", CONTOSO_CA, "www.contoso.com", ["mail.contoso.com"], (-1, 30))],
            CERT_NAME,
            "SubjectNotFound",
        ),
        (
            [("s1", CONTOSO_CA, "mail.contoso.com", ["mail.contoso.com"], (-60, -2))],
            CERT_NAME,
            "Expired",
        ),
        (
            [("s1", CONTOSO_CA, "mail.contoso.com", ["www.contoso.com"], (-1, 30))],
            CERT_NAME,
            "FqdnNotInSubjectAltName",
        ),
        ([], CERT_NAME, "NoCertificates"),
    ],
)
def test_each_reason_a_certificate_is_not_chosen_is_shown(
    controlplane: Any, operator: Any, ns: str, secrets: list[tuple], cert_name: str, reason: str
) -> None:
    bodies = [
        tls_secret(s, ns, *ca.issue(subject, dns, days)) for s, ca, subject, dns, days in secrets
    ]
    _apply(controlplane, *bodies, *_server_and_connector(ns, cert_name))
    cond = eventually(
        lambda: condition(get(controlplane, "rcvc", "internet", ns), "CertificateReady")
    )
    assert cond["status"] == "False" and cond["reason"] == reason
    assert "STARTTLS is not offered" in cond["message"]
    assert _tls_of(controlplane, ns) is None
