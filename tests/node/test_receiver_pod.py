"""The receiver image, built offline from receiver/Dockerfile, runs as the operator would
run it: the ConfigMap, the StatefulSet (Maildir spool on the hostPath volume the node's
provisioner makes for its claim) and the Service that operator/resources.py writes for a
server with one Internet connector. An SMTP client on this host gets the banner and delivers through the pod IP and
through the ClusterIP; the message lands in the spool on the volume."""

from __future__ import annotations

import json
import time

from smtpgate.connectors import config, specs
from smtpgate.operator import resources

from hack.node.standins import StandIns

from ..conftest import NodeCluster
from ..kube_helpers import eventually
from ..receiver.helpers import Raw

SERVER = "ex01"


def _connect(host: str, port: int, timeout: float = 30) -> Raw:
    """A client connected to ``host:port``, retrying while nothing accepts yet (kube-proxy
    rejects a Service's connections until it has synced the new endpoints)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Raw(port, host=host, source="0.0.0.0")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _conversation(host: str, port: int, tag: str) -> str:
    client = _connect(host, port)
    code, banner = client.reply()
    assert code == 220, banner
    assert client.command("EHLO client.example")[0] == 250
    assert client.command("MAIL FROM:<sender@example.org>")[0] == 250
    assert client.command("RCPT TO:<someone@contoso.com>")[0] == 250
    assert client.command("DATA")[0] == 354
    client.send(f"Subject: {tag}\r\n\r\nthrough the node\r\n.\r\n".encode())
    code, text = client.reply()
    assert code == 250, text
    client.command("QUIT")
    client.close()
    return banner


def test_receiver_pod_serves_smtp(
    node: NodeCluster, receiver_image: str, node_ns: str, standins: StandIns
) -> None:
    ns = node_ns
    owner = json.loads(
        node.kubectl(
            "apply",
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": resources.API_VERSION,
                    "kind": "TransportServer",
                    "metadata": {"name": SERVER, "namespace": ns},
                    "spec": {"fqdn": "mail.contoso.com", "exposure": {"type": "ClusterIP"}},
                }
            ),
        ).stdout
    )
    spec = specs.TransportServerSpec.model_validate(owner["spec"])
    connector = specs.ReceiveConnectorSpec.model_validate(
        {"server": SERVER, "usage": "Internet", "bindings": ["0.0.0.0:25"]}
    )
    compiled = config.compile_server(
        SERVER,
        ns,
        spec,
        [("Internet", connector)],
        [specs.AcceptedDomainSpec(domain_name="contoso.com")],
    ).config
    ref = resources.owner_reference(owner)
    objects = [
        resources.configmap(SERVER, ns, compiled, ref),
        resources.workload(
            SERVER, ns, spec, compiled, image=receiver_image, owner=ref, tls_secrets=[]
        ),
        *resources.services(SERVER, ns, spec, compiled, ref),
    ]
    assert objects[1]["kind"] == "StatefulSet"
    for body in objects:
        node.kubectl("apply", "-f", "-", input=json.dumps(body))
    name = resources.receiver_name(SERVER)
    done = node.kubectl(
        "rollout", "status", "-n", ns, f"statefulset/{name}", "--timeout=100s", check=False
    )
    if done.returncode != 0:
        pods = node.kubectl("describe", "pods", "-n", ns, check=False).stdout
        logs = node.kubectl("logs", "-n", ns, f"{name}-0", check=False)
        raise AssertionError(f"{done.stderr}\n{pods[-3000:]}\n{logs.stdout}{logs.stderr}")
    pod = json.loads(node.kubectl("get", "pod", "-n", ns, f"{name}-0", "-o", "json").stdout)
    spool = standins.claim_folder(ns, f"spool-{name}-0")  # provisioned for the claim
    banner = _conversation(pod["status"]["podIP"], 25, "via-pod-ip")
    assert "mail.contoso.com" in banner
    if node.node.kube_proxy == "iptables":
        service = json.loads(node.kubectl("get", "svc", "-n", ns, name, "-o", "json").stdout)
        _conversation(service["spec"]["clusterIP"], 25, "via-cluster-ip")

    def delivered() -> set[str]:
        subjects = set()
        for message in spool.rglob("new/*"):
            for line in message.read_text(errors="replace").splitlines():
                if line.startswith("Subject: "):
                    subjects.add(line.removeprefix("Subject: "))
        return subjects

    expected = {"via-pod-ip"} | (
        {"via-cluster-ip"} if node.node.kube_proxy == "iptables" else set()
    )
    eventually(lambda: delivered() >= expected, timeout=30, what=f"{expected} in the spool")
