"""A receiver pod whose spool is full, on a real node: the StatefulSet that
operator/resources.py writes, with ``minFreeBytes`` above what the claim's volume (a
hostPath under the node's folder) has free, rolls out Ready (the kubelet's readiness probe
keeps passing, as the README promises), the pod stays in its Service, and a client gets
``452 4.3.1`` at MAIL, through the pod IP and the ClusterIP, while its ``/spool`` says
SpoolFull."""

from __future__ import annotations

import json
import urllib.request

from smtpgate.connectors import config, specs
from smtpgate.operator import resources
from smtpgate.receiver import backpressure

from hack.node.standins import StandIns

from ..conftest import NodeCluster
from ..kube_helpers import eventually
from ..receiver.helpers import expected
from .test_receiver_pod import _connect

SERVER = "ex01"
GIB = 1 << 30


def _mail(host: str) -> tuple[int, str]:
    client = _connect(host, 25)
    try:
        assert client.reply()[0] == 220
        assert client.command("EHLO client.example")[0] == 250
        return client.command("MAIL FROM:<sender@example.org>")
    finally:
        client.close()


def test_a_receiver_pod_with_a_full_spool_stays_ready_in_its_service_and_answers_452(
    node: NodeCluster, receiver_image: str, node_ns: str, standins: StandIns
) -> None:
    ns = node_ns
    standins.volumes.mkdir(parents=True, exist_ok=True)
    wanted = backpressure.usage(standins.volumes).free + GIB  # more than the volume has
    owner = json.loads(
        node.kubectl(
            "apply", "-o", "json", "-f", "-",
            input=json.dumps(
                {
                    "apiVersion": resources.API_VERSION,
                    "kind": "TransportServer",
                    "metadata": {"name": SERVER, "namespace": ns},
                    "spec": {
                        "fqdn": "mail.contoso.com",
                        "exposure": {"type": "ClusterIP"},
                        "nextHop": {"storage": {"minFreeBytes": wanted, "minFreePercent": 0}},
                    },
                }
            ),
        ).stdout
    )  # fmt: skip
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
    for body in [
        resources.configmap(SERVER, ns, compiled, ref),
        resources.workload(
            SERVER, ns, spec, compiled, image=receiver_image, owner=ref, tls_secrets=[]
        ),
        *resources.services(SERVER, ns, spec, compiled, ref),
    ]:
        node.kubectl("apply", "-f", "-", input=json.dumps(body))
    name = resources.receiver_name(SERVER)
    done = node.kubectl(
        "rollout", "status", "-n", ns, f"statefulset/{name}", "--timeout=100s", check=False
    )
    if done.returncode != 0:  # the readiness probe failed with the spool full
        pods = node.kubectl("describe", "pods", "-n", ns, check=False).stdout
        raise AssertionError(f"{done.stderr}\n{pods[-3000:]}")
    pod = json.loads(node.kubectl("get", "pod", "-n", ns, f"{name}-0", "-o", "json").stdout)
    address = pod["status"]["podIP"]

    assert _mail(address) == expected(backpressure.SPOOL_FULL)
    url = f"http://{address}:{resources.HEALTH_PORT}/spool"
    with urllib.request.urlopen(url, timeout=10) as response:
        report = json.loads(response.read())
    assert (report["refusing"], report["reason"]) == (True, "SpoolFull")
    assert report["minFreeBytes"] == wanted and report["freeBytes"] < wanted

    def in_service() -> list[str]:
        slices = json.loads(
            node.kubectl(
                "get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={name}",
                "-o", "json",
            ).stdout
        )  # fmt: skip
        return [
            ip
            for item in slices["items"]
            for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready")
            for ip in endpoint["addresses"]
        ]

    assert eventually(in_service, timeout=30, what="the pod among the Service's endpoints") == [
        address
    ]  # still in the Service, ready
    if node.node.kube_proxy == "iptables":
        service = json.loads(node.kubectl("get", "svc", "-n", ns, name, "-o", "json").stdout)
        assert _mail(service["spec"]["clusterIP"]) == expected(backpressure.SPOOL_FULL)
