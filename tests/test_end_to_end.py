"""All three rooms: manifests → operator → ConfigMap and certificate Secret → the files a pod
would mount → the receiver on loopback → real SMTP clients from different addresses."""

from __future__ import annotations

import json
import os
import pathlib
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

import bcrypt
import pytest

from hack.controlplane import podfiles
from hack.pki import Authority, tls_secret

from .kube_helpers import condition, eventually, get

CA = Authority("Contoso Issuing CA", "Contoso")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _manifests(ns: str, cert: bytes, key: bytes) -> list[dict[str, Any]]:
    hashed = bcrypt.hashpw(b"alice-secret", bcrypt.gensalt(rounds=4)).decode()
    users = f"alice:{hashed}:alice@contoso.com\n"
    return [
        tls_secret("mail-contoso-com", ns, cert, key),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "smtp-users", "namespace": ns},
            "stringData": {"auth": users},
        },
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "AcceptedDomain",
            "metadata": {"name": "contoso", "namespace": ns},
            "spec": {"domainName": "contoso.com"},
        },
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "TransportServer",
            "metadata": {"name": "edge-in", "namespace": ns},
            "spec": {
                "fqdn": "mail.contoso.com",
                "createDefaultConnectors": False,
                "userDatabaseSecretRef": {"name": "smtp-users"},
            },
        },
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "ReceiveConnector",
            "metadata": {"name": "internet", "namespace": ns},
            "spec": {
                "server": "edge-in",
                "usage": "Internet",
                "bindings": ["0.0.0.0:25"],
                "tlsCertificateName": "<I>CN=Contoso Issuing CA,O=Contoso<S>CN=mail.contoso.com",
                "tarpitIntervalSeconds": 0,
            },
        },
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "ReceiveConnector",
            "metadata": {"name": "relay-app", "namespace": ns},
            "spec": {
                "server": "edge-in",
                "usage": "Custom",
                "bindings": ["0.0.0.0:25"],
                "remoteIPRanges": ["127.0.0.75"],
                "permissionGroups": ["AnonymousUsers"],
                "permissions": [
                    {
                        "principal": "NT AUTHORITY\\ANONYMOUS LOGON",
                        "extendedRights": ["ms-Exch-SMTP-Accept-Any-Recipient"],
                    }
                ],
            },
        },
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "ReceiveConnector",
            "metadata": {"name": "submission", "namespace": ns},
            "spec": {
                "server": "edge-in",
                "usage": "Client",
                "bindings": ["0.0.0.0:587"],
                "tlsCertificateName": "<I>CN=Contoso Issuing CA,O=Contoso<S>CN=mail.contoso.com",
            },
        },
    ]


@pytest.fixture
def e2e(controlplane: Any, operator: Any, ns: str, tmp_path: pathlib.Path) -> Any:
    cert, key = CA.issue("mail.contoso.com", ["mail.contoso.com"])
    controlplane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": _manifests(ns, cert, key)}),
    )
    for name in ("internet", "relay-app", "submission"):
        eventually(
            lambda n=name: condition(get(controlplane, "rcvc", n, ns), "Ready")["status"] == "True",
            what=f"{name} Ready",
        )
    eventually(
        lambda: (
            condition(get(controlplane, "rcvc", "submission", ns), "CertificateReady")["status"]
            == "True"
        )
    )
    config_file = podfiles.lay_out(
        [controlplane.plane.kubectl, "--kubeconfig", controlplane.kubeconfig],
        ns,
        "edge-in",
        tmp_path / "pod",
    )
    ports = {25: _free_port(), 587: _free_port()}
    (tmp_path / "ca.crt").write_bytes(CA.pem())
    with open(tmp_path / "receiver.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpgate.receiver",
                "--config",
                str(config_file),
                "--files-root",
                str(tmp_path / "pod"),
                "--spool",
                str(tmp_path / "spool"),
                "--protocol-log",
                str(tmp_path / "protocol.log"),
                "--listen-v4",
                "127.0.0.1",
                "--listen-v6",
                "::1",
                "--port-map",
                ",".join(f"{k}={v}" for k, v in ports.items()),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            env=dict(os.environ),
        )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline().decode()
        assert line.strip() == "ready", (tmp_path / "receiver.log").read_text()
        yield {"ports": ports, "spool": tmp_path / "spool", "ca": str(tmp_path / "ca.crt")}
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stdout.close()


def test_manifests_drive_a_real_receiver(e2e: Any) -> None:
    ports = e2e["ports"]
    with smtplib.SMTP("127.0.0.1", ports[25], source_address=("127.0.0.2", 0), timeout=10) as smtp:
        smtp.ehlo("internet-host.example")
        smtp.mail("someone@example.org")
        assert smtp.rcpt("friend@foreign.example")[0] == 550
        assert smtp.rcpt("user@contoso.com")[0] == 250
        code, _ = smtp.data(b"Subject: hello\r\n\r\nfrom the internet\r\n")
        assert code == 250
    time.sleep(0.1)
    assert len(list((e2e["spool"] / "new").iterdir())) == 1

    with smtplib.SMTP("127.0.0.1", ports[25], source_address=("127.0.0.75", 0), timeout=10) as smtp:
        smtp.ehlo("app.example")
        smtp.mail("app@contoso.com")
        assert smtp.rcpt("friend@foreign.example")[0] == 250

    context = ssl.create_default_context(cafile=e2e["ca"])
    context.check_hostname = False
    with smtplib.SMTP("127.0.0.1", ports[587], timeout=10) as smtp:
        smtp.ehlo("laptop.example")
        assert not smtp.has_extn("auth")
        smtp.starttls(context=context)
        peer = smtp.sock.getpeercert()
        assert dict(x[0] for x in peer["subject"])["commonName"] == "mail.contoso.com"
        assert dict(x[0] for x in peer["issuer"])["commonName"] == "Contoso Issuing CA"
        smtp.ehlo("laptop.example")
        assert "PLAIN" in smtp.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("alice", "wrong")
        smtp.login("alice", "alice-secret")
        assert (
            smtp.sendmail(
                "alice@contoso.com", ["friend@foreign.example"], b"Subject: out\r\n\r\nhi\r\n"
            )
            == {}
        )
    assert len(list((e2e["spool"] / "new").iterdir())) == 2
