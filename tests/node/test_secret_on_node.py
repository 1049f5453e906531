"""A TransportServer's user database Secret, and its krb5.conf ConfigMap, on a real node:
while one is missing the receiver pod waits in ContainerCreating and the server's Ready names
it; created, the kubelet starts the pod without anything else changing; deleted under the
running pod, the pod keeps serving, its workload untouched, while the condition says what is
wrong."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from hack.node.standins import StandIns

from ..conftest import NodeCluster
from ..kube_helpers import Operator, condition, eventually
from ..receiver.helpers import Raw
from .conftest import measured

USERS = "alice:$2b$10$AGM9wjfOn7esKDBlpwFnVO6kuFwwoL28Jy960YR7sMPNQBr0wt3tW\n"


def _get(node: NodeCluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    return dict(json.loads(node.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout))


def _ready(node: NodeCluster, ns: str) -> dict[str, Any]:
    return condition(_get(node, "tsrv", "ex01", ns), "Ready")


def _banner(host: str) -> str:
    client = Raw(25, host=host, source="0.0.0.0")
    try:
        code, text = client.reply()
        assert code == 220, text
        return text
    finally:
        client.close()


SERVER = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec:
  fqdn: mail.contoso.com
  image: {image}
  createDefaultConnectors: false
  exposure: {{type: ClusterIP}}
{mounts}
---
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: inbound, namespace: {ns}}}
spec:
  server: ex01
  usage: Internet
  bindings: ["0.0.0.0:25"]
"""


def _waits_then_keeps_serving(
    node: NodeCluster, ns: str, log: pathlib.Path, manifest: str, missing: dict[str, Any]
) -> float:
    """Apply ``manifest`` (a server whose pods mount ``missing``, not there yet): Ready names
    it and the pod waits in ContainerCreating; ``missing`` created, nothing else changed, the
    pod starts and serves (the seconds this took are returned); deleted again, the pod keeps
    serving, its workload untouched, while Ready names it."""
    kind, name = missing["kind"], missing["metadata"]["name"]
    reason = f"{kind}NotFound"
    running = Operator(node.kubeconfig, log, lease_namespace=ns, namespaces=[ns])
    running.start()
    try:
        node.kubectl("apply", "-f", "-", input=manifest)
        eventually(
            lambda: _ready(node, ns)["reason"] == reason, timeout=60, what=f"Ready False, {reason}"
        )

        def creating() -> bool:
            pod = _get(node, "pod", "ex01-receiver-0", ns)
            waiting = pod["status"]["containerStatuses"][0]["state"].get("waiting") or {}
            return bool(waiting.get("reason") == "ContainerCreating")

        eventually(creating, timeout=90, what="the pod waiting in ContainerCreating")
        time.sleep(5)
        assert creating(), f"the pod cannot start without its {kind}"
        assert f"{kind} {ns}/{name}" in _ready(node, ns)["message"]

        started = time.monotonic()
        node.kubectl("apply", "-f", "-", input=json.dumps(missing))  # nothing else changes
        eventually(
            lambda: _ready(node, ns)["status"] == "True",
            timeout=180,
            what="the pod started and the server Ready",
        )
        elapsed = time.monotonic() - started
        pod = _get(node, "pod", "ex01-receiver-0", ns)
        assert "mail.contoso.com" in _banner(pod["status"]["podIP"])
        before = _get(node, "statefulset", "ex01-receiver", ns)

        node.kubectl("delete", kind.lower(), name, "-n", ns)
        eventually(
            lambda: _ready(node, ns)["reason"] == reason,
            timeout=20,
            what=f"Ready False once the {kind} is gone",
        )
        time.sleep(10)
        after = _get(node, "statefulset", "ex01-receiver", ns)
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        still = _get(node, "pod", "ex01-receiver-0", ns)
        assert still["metadata"]["uid"] == pod["metadata"]["uid"]
        assert still["status"]["containerStatuses"][0]["ready"] is True
        assert "mail.contoso.com" in _banner(still["status"]["podIP"])
        return elapsed
    finally:
        running.stop()


def test_pods_wait_for_a_missing_secret_and_keep_serving_when_it_goes(
    node: NodeCluster,
    receiver_image: str,
    node_ns: str,
    standins: StandIns,
    tmp_path: pathlib.Path,
) -> None:
    ns = node_ns
    mounts = "  userDatabaseSecretRef: {name: smtp-users, key: auth}"
    users = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "smtp-users", "namespace": ns},
        "stringData": {"auth": USERS},
    }
    manifest = SERVER.format(ns=ns, image=receiver_image, mounts=mounts)
    elapsed = _waits_then_keeps_serving(node, ns, tmp_path / "operator.log", manifest, users)
    measured(f"missing user database Secret created -> receiver pod ready: {elapsed:.1f}s")


def test_pods_wait_for_a_missing_krb5_config_map_and_keep_serving_when_it_goes(
    node: NodeCluster,
    receiver_image: str,
    node_ns: str,
    standins: StandIns,
    tmp_path: pathlib.Path,
) -> None:
    ns = node_ns
    mounts = """  kerberos:
    realm: CONTOSO.COM
    servicePrincipals: [SMTP/mail.contoso.com]
    keytabSecretRef: {name: ex01-keytab, key: krb5.keytab}
    krb5ConfigMapRef: {name: krb5, key: krb5.conf}"""
    keytab = f"""
apiVersion: v1
kind: Secret
metadata: {{name: ex01-keytab, namespace: {ns}}}
stringData: {{krb5.keytab: "read only when a client sends AUTH GSSAPI"}}
---"""
    krb5 = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "krb5", "namespace": ns},
        "data": {"krb5.conf": "[libdefaults]\n  default_realm = CONTOSO.COM\n"},
    }
    manifest = keytab + SERVER.format(ns=ns, image=receiver_image, mounts=mounts)
    elapsed = _waits_then_keeps_serving(node, ns, tmp_path / "operator.log", manifest, krb5)
    measured(f"missing krb5.conf ConfigMap created -> receiver pod ready: {elapsed:.1f}s")
