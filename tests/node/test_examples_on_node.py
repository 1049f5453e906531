"""Every file in examples/ applied to the node, with the chart's operator reconciling them:
the receiver pods run and are Ready, and SMTP from outside the cluster through each
connector's Service reaches that connector and delivers to the spool on its volume. The
clients sit in a network namespace with addresses from the documentation ranges; their
connections reach the pods through kube-proxy with the client's own address
(``externalTrafficPolicy: Local``), so remote-range selection sees the real client.

Then, on the same pods: a renewed certificate Secret is served on the next STARTTLS
without a restart, and an edited connector reaches new sessions; both are timed."""

from __future__ import annotations

import ipaddress
import json
import pathlib
import smtplib
import ssl
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from smtpgate.connectors.config import ServerConfig

from hack.controlplane.harness import free_port
from hack.node.outside import CLIENTS, Outside
from hack.node.standins import StandIns
from hack.pki import Authority, ca_config_map

from ..conftest import ROOT
from ..kube_helpers import eventually
from .chart import Release
from .conftest import measured

PARTNER, INTERNET = CLIENTS  # 198.51.100.7 is in partner-fabrikam's range; 203.0.113.7 not
SECRET = "mail-contoso-com"


class Examples:
    def __init__(self, release: Release, standins: StandIns, outside: Outside) -> None:
        self.release, self.node, self.standins, self.outside = (
            release,
            release.node,
            standins,
            outside,
        )
        self.ns = release.namespace
        self.authority = Authority("Contoso Issuing CA", "Contoso")
        self.ca_file = self.node.node.workdir / "contoso-ca.crt"
        self.ca_file.write_bytes(self.authority.pem())
        self.partner = Authority("Fabrikam Issuing CA", "Fabrikam")  # examples/05's anchor

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.node.kubectl(*args, input=input).stdout

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-n", self.ns, "-o", "json")))

    def write_certificate(self) -> int:
        """What cert-manager writes (and rewrites on renewal): returns the serial."""
        cert, key = self.authority.issue("mail.contoso.com", ["mail.contoso.com"], (-1, 90))
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": SECRET, "namespace": self.ns},
            "stringData": {"tls.crt": cert.decode(), "tls.key": key.decode()},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(secret))
        from cryptography import x509

        return x509.load_pem_x509_certificate(cert).serial_number

    def config(self, server: str) -> ServerConfig:
        return ServerConfig.from_json(
            self.get("configmap", f"{server}-receiver")["data"]["config.json"]
        )

    def address(self, service: str) -> str:
        """The load balancer's address of a Service (the stand-in writes it)."""

        def ingress() -> str:
            status = self.get("service", service)["status"]
            return str(status["loadBalancer"]["ingress"][0]["ip"])

        return str(eventually(ingress, timeout=30, what=f"a load balancer address for {service}"))

    def smtp(self, host: str, port: int, source: str = INTERNET) -> smtplib.SMTP:
        """A client from outside, retrying while kube-proxy has not synced the endpoints."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.outside.smtp(host, port, source)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def spooled(self, server: str, replicas: int = 1) -> dict[str, str]:
        """Subject → message of everything in the server's spools (one volume a replica)."""
        found = {}
        for index in range(replicas):
            claim = f"spool-{server}-receiver-{index}"
            for message in self.standins.claim_folder(self.ns, claim).rglob("new/*"):
                text = message.read_text(errors="replace")
                for line in text.splitlines():
                    if line.startswith("Subject: "):
                        found[line.removeprefix("Subject: ")] = text
        return found

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.check_hostname = False  # we dial an address; the name is checked by CN
        return context


@pytest.fixture(scope="module")
def examples(release: Release, standins: StandIns, outside: Outside) -> Iterator[Examples]:
    here = Examples(release, standins, outside)
    here.kubectl("apply", "-f", str(ROOT / "hack" / "cert-manager-stand-in.yaml"))
    here.kubectl(
        "wait", "--for=condition=Established", "crd/certificates.cert-manager.io", "--timeout=60s"
    )
    here.write_certificate()
    anchors = ca_config_map("fabrikam-partner-ca", here.ns, here.partner)  # examples/05's
    here.kubectl("apply", "-f", "-", input=json.dumps(anchors))
    here.kubectl("apply", "-n", here.ns, "-f", str(ROOT / "examples"))
    for server in ("ex01", "mx01"):
        release.wait_ready("transportserver", server, timeout=240)
    yield here
    here.kubectl(
        "delete", "-n", here.ns, "-f", str(ROOT / "examples"), "--wait=false", "--ignore-not-found"
    )


def _pods(examples: Examples, server: str) -> list[dict[str, Any]]:
    out = examples.kubectl(
        "get", "pods", "-n", examples.ns, "-l", f"app.kubernetes.io/instance={server}", "-o", "json"
    )
    return list(json.loads(out)["items"])


def test_every_example_runs_as_ready_receiver_pods(examples: Examples) -> None:
    for server, replicas in (("ex01", 2), ("mx01", 1)):
        pods = _pods(examples, server)
        assert len(pods) == replicas, [p["metadata"]["name"] for p in pods]
        for pod in pods:
            assert pod["status"]["phase"] == "Running"
            ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert ready["Ready"] == "True", pod["status"]
            assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        claims = json.loads(examples.kubectl("get", "pvc", "-n", examples.ns, "-o", "json"))
        bound = {c["metadata"]["name"] for c in claims["items"] if c["status"]["phase"] == "Bound"}
        assert {f"spool-{server}-receiver-{i}" for i in range(replicas)} <= bound


def test_each_default_connector_answers_with_its_banner_through_the_load_balancer(
    examples: Examples,
) -> None:
    """ex01's default connectors, each on its port of the Service ``ex01-receiver``."""
    config = examples.config("ex01")
    address = examples.address("ex01-receiver")
    ports = sorted({b.port for c in config.connectors for b in c.parsed_bindings})
    assert ports, config
    for port in ports:
        expected = config.connector_for(
            ipaddress.ip_address(address), port, ipaddress.ip_address(INTERNET)
        )
        assert expected is not None
        with examples.smtp(address, port) as client:
            code, banner = client.banner  # type: ignore[attr-defined]
            assert f"{code} {banner}" == expected.banner, (port, expected.name)
    with examples.smtp(address, 25) as client:
        client.sendmail(
            "someone@example.org", ["user@contoso.com"], b"Subject: ex01-25\r\n\r\nhi\r\n"
        )
    eventually(lambda: "ex01-25" in examples.spooled("ex01", 2), what="ex01's spool")


def test_remote_range_selects_the_connector_by_the_address_the_pod_sees(
    examples: Examples,
) -> None:
    """mx01's 192.0.2.10:25 carries two connectors; the partner's range picks its own."""
    address = examples.address("mx01-receiver-192-0-2-10")
    assert address == "192.0.2.10"
    with examples.smtp(address, 25, source=INTERNET) as client:
        assert client.banner == (220, "mail.contoso.com ESMTP ready")  # type: ignore[attr-defined]
        client.ehlo("outside.example")
        assert client.esmtp_features["size"] == str(25 * 1024 * 1024)
        client.sendmail(
            "someone@example.org", ["user@contoso.com"], b"Subject: mx01-internet\r\n\r\nhi\r\n"
        )
    message = eventually(lambda: examples.spooled("mx01").get("mx01-internet"), what="mx01's spool")
    assert f"[{INTERNET}]" in message.split("\n\n")[0]  # Received: the client the pod saw
    with examples.smtp(address, 25, source=PARTNER) as client:
        assert client.banner == (  # type: ignore[attr-defined]
            220,
            "mail.contoso.com ESMTP smtpgate ready",
        )
        client.ehlo("partner.example")
        assert client.esmtp_features["size"] == str(100 * 1024 * 1024)
        # Domain security: fabrikam.com's mail needs STARTTLS with Fabrikam's certificate.
        code, text = client.mail("someone@fabrikam.com")
        assert (code, text[:5]) == (451, b"4.7.3"), text
        client.rset()
        context = examples.tls_context()
        with tempfile.TemporaryDirectory() as folder:
            cert, key = examples.partner.issue("mail.fabrikam.com", ["fabrikam.com"])
            (pathlib.Path(folder) / "partner.pem").write_bytes(cert + key)
            context.load_cert_chain(str(pathlib.Path(folder) / "partner.pem"))
        client.starttls(context=context)
        client.ehlo("mail.fabrikam.com")
        client.sendmail(
            "someone@fabrikam.com", ["user@contoso.com"], b"Subject: mx01-partner\r\n\r\nhi\r\n"
        )
    message = eventually(lambda: examples.spooled("mx01").get("mx01-partner"), what="mx01's spool")
    assert f"[{PARTNER}]" in message.split("\n\n")[0]


def test_submission_requires_tls_then_auth_and_spools(examples: Examples) -> None:
    address = examples.address("mx01-receiver")
    with examples.smtp(address, 587) as client:
        client.ehlo("laptop.example")
        assert not client.has_extn("auth")
        assert client.mail("alice@contoso.com")[0] == 530
        client.rset()
        client.starttls(context=examples.tls_context())
        peer = client.sock.getpeercert()
        assert dict(x[0] for x in peer["subject"])["commonName"] == "mail.contoso.com"
        client.ehlo("laptop.example")
        client.login("alice", "demo-password")
        refused = client.sendmail(
            "alice@contoso.com", ["partner@foreign.example"], b"Subject: submitted\r\n\r\nhi\r\n"
        )
        assert refused == {}
    eventually(lambda: "submitted" in examples.spooled("mx01"), what="mx01's spool")


def _served_serial(examples: Examples, address: str) -> int:
    from cryptography import x509

    with examples.smtp(address, 587) as client:
        client.ehlo("laptop.example")
        client.starttls(context=examples.tls_context())
        der = client.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_renewed_certificate_is_served_without_a_restart(examples: Examples) -> None:
    """cert-manager rewrites the Secret in place; the kubelet projects it into the pod's
    volume and the receiver serves it on the next STARTTLS, in the same container."""
    address = examples.address("mx01-receiver")
    before = _pods(examples, "mx01")[0]
    first = _served_serial(examples, address)
    started = time.monotonic()
    renewed = examples.write_certificate()
    assert renewed != first
    eventually(
        lambda: _served_serial(examples, address) == renewed,
        timeout=120,
        what="the renewed certificate on STARTTLS",
    )
    took = time.monotonic() - started
    measured(f"renewed certificate Secret served on STARTTLS after {took:.1f} s")
    after = _pods(examples, "mx01")[0]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert (
        after["status"]["containerStatuses"][0]["containerID"]
        == before["status"]["containerStatuses"][0]["containerID"]
    )
    assert took < 90


def test_edited_connector_reaches_new_sessions_in_the_pod(examples: Examples) -> None:
    """The operator rewrites the ConfigMap, the kubelet projects it, the receiver reloads."""
    address = "192.0.2.10"
    before = _pods(examples, "mx01")[0]
    started = time.monotonic()
    examples.kubectl(
        "patch",
        "receiveconnector",
        "internet-mx01",
        "-n",
        examples.ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"banner": "220 mail.contoso.com edited"}}),
    )

    def banner() -> str:
        with examples.smtp(address, 25) as client:
            return str(client.banner[1])  # type: ignore[attr-defined]

    eventually(lambda: banner() == "mail.contoso.com edited", timeout=120, what="the new banner")
    took = time.monotonic() - started
    measured(f"edited connector seen by a new session in the pod after {took:.1f} s")
    after = _pods(examples, "mx01")[0]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert took < 90


def test_relay_next_hop_reaches_a_sink_on_the_host(
    examples: Examples, tmp_path: pathlib.Path
) -> None:
    """A server whose next hop is SMTP: the pod relays to a capture sink on the node's
    address, which pods reach over the bridge."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    received: list[bytes] = []

    class Capture(Sink):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.original_content or b"")
            return "250 2.0.0 captured"

    node_ip = examples.node.node.node_ip
    port = free_port(node_ip)
    sink = Controller(Capture(), hostname=node_ip, port=port)
    sink.start()
    try:
        manifests = [
            {
                "apiVersion": "smtpgate.io/v1alpha1",
                "kind": "TransportServer",
                "metadata": {"name": "relay01", "namespace": examples.ns},
                "spec": {
                    "fqdn": "relay.contoso.com",
                    "createDefaultConnectors": False,
                    "exposure": {"type": "ClusterIP"},
                    "nextHop": {"type": "Smtp", "host": node_ip, "port": port},
                },
            },
            {
                "apiVersion": "smtpgate.io/v1alpha1",
                "kind": "ReceiveConnector",
                "metadata": {"name": "relay-in", "namespace": examples.ns},
                "spec": {"server": "relay01", "usage": "Internet", "bindings": ["0.0.0.0:25"]},
            },
        ]
        for body in manifests:
            examples.kubectl("apply", "-f", "-", input=json.dumps(body))
        examples.release.wait_ready("transportserver", "relay01")
        assert examples.get("deployment", "relay01-receiver")["kind"] == "Deployment"
        cluster_ip = examples.get("service", "relay01-receiver")["spec"]["clusterIP"]
        deadline = time.monotonic() + 30
        while True:
            try:
                client = smtplib.SMTP(cluster_ip, 25, timeout=15)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        with client:
            client.sendmail(
                "someone@example.org", ["user@contoso.com"], b"Subject: relayed\r\n\r\nhi\r\n"
            )
        assert any(b"Subject: relayed" in m for m in received)
    finally:
        sink.stop()
        examples.kubectl(
            "delete",
            "-n",
            examples.ns,
            "transportserver/relay01",
            "receiveconnector/relay-in",
            "--wait=false",
        )
