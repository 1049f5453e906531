"""What a platform team sets on a TransportServer reaches its receivers: resources (or a
memory limit sized from the connectors), scheduling, pod metadata, the spool's claims, a
PodDisruptionBudget, a metrics Service, and the scale subresource."""

from __future__ import annotations

import json
from typing import Any

from ..kube_helpers import apply, eventually, get

SERVER = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec:
  fqdn: mail.contoso.com
  createDefaultConnectors: false
  replicas: 2
  pod:
    nodeSelector: {{mail: "true"}}
    tolerations: [{{key: dedicated, operator: Equal, value: mail, effect: NoSchedule}}]
    topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
         labelSelector: {{matchLabels: {{app.kubernetes.io/instance: ex01}}}}}}
    priorityClassName: mail-critical
    annotations: {{team: messaging}}
    labels: {{cost-center: "42"}}
    {resources}
  disruptionBudget: {{maxUnavailable: 0}}
  nextHop:
    storage: {{size: 5Gi, storageClassName: fast, whenDeleted: Delete}}
---
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: partner, namespace: {ns}}}
spec:
  server: ex01
  usage: Internet  # anonymous senders: a Partner connector would need domain security
  bindings: ["0.0.0.0:2526"]
  remoteIPRanges: ["198.51.100.0/24"]
  maxInboundConnection: 100
"""


def test_pod_settings_reach_the_workload(controlplane: Any, operator: Any, ns: str) -> None:
    apply(controlplane, SERVER.format(ns=ns, resources=""))
    workload = eventually(lambda: get(controlplane, "statefulset", "ex01-receiver", ns))
    template = workload["spec"]["template"]
    pod = template["spec"]
    assert pod["nodeSelector"] == {"mail": "true"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["priorityClassName"] == "mail-critical"
    assert template["metadata"]["labels"]["cost-center"] == "42"
    assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == "ex01"
    assert template["metadata"]["annotations"]["team"] == "messaging"
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    # 100 connections for the partner, 5000 for the implicit delivery connector (475)
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["memory"] == f"{256 + (100 + 5000) * 512 // 1024}Mi"
    claim = workload["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast"
    assert claim["resources"]["requests"]["storage"] in ("5Gi", str(5 * 1024**3))
    assert workload["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    budget = get(controlplane, "poddisruptionbudget", "ex01-receiver", ns)
    assert budget["spec"]["maxUnavailable"] == 0
    assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "ex01"
    metrics = get(controlplane, "service", "ex01-receiver-metrics", ns)
    assert metrics["spec"]["ports"][0]["port"] == 8080
    assert metrics["metadata"]["annotations"]["prometheus.io/scrape"] == "true"

    apply(
        controlplane,
        SERVER.format(ns=ns, resources="resources: {limits: {memory: 3Gi}, requests: {cpu: 1}}"),
    )

    def own_resources() -> bool:
        container = get(controlplane, "statefulset", "ex01-receiver", ns)["spec"]["template"][
            "spec"
        ]["containers"][0]
        assert container["resources"]["limits"] == {"memory": "3Gi"}, container["resources"]
        return True

    eventually(own_resources, what="the server's own resources")


def test_kubectl_scale_and_ready_of_desired(controlplane: Any, operator: Any, ns: str) -> None:
    apply(controlplane, SERVER.format(ns=ns, resources=""))
    eventually(
        lambda: get(controlplane, "tsrv", "ex01", ns)["status"].get("replicasReady") == "2/2",
        what="2/2 ready",
    )
    controlplane.kubectl("scale", "tsrv", "ex01", "-n", ns, "--replicas=3")
    eventually(
        lambda: get(controlplane, "statefulset", "ex01-receiver", ns)["spec"]["replicas"] == 3,
        what="the workload scaled",
    )
    server = eventually(
        lambda: (s := get(controlplane, "tsrv", "ex01", ns))["status"].get("replicas") == 3 and s,
        what="status.replicas",
    )
    assert server["status"]["replicasReady"] == "3/3"
    scale = json.loads(
        controlplane.kubectl(
            "get",
            "--raw",
            f"/apis/smtpgate.io/v1alpha1/namespaces/{ns}/transportservers/ex01/scale",
        ).stdout
    )
    assert scale["status"]["replicas"] == 3
    assert "app.kubernetes.io/instance=ex01" in scale["status"]["selector"]
    table = controlplane.kubectl("get", "tsrv", "ex01", "-n", ns, "-o", "wide").stdout
    header, row = table.splitlines()[:2]
    assert "REPLICAS" in header and "3/3" in row and "EXPOSURE" in header


EXPOSED = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec:
  fqdn: mail.contoso.com
  exposure:
    type: ClusterIP
    ports: [{{port: 25, type: LoadBalancer}}]
    loadBalancerClass: metallb.io/metallb
    externalTrafficPolicy: Cluster
    annotations: {{metallb.universe.tf/address-pool: mail}}
    ipFamilyPolicy: SingleStack
    ipFamilies: [IPv4]
"""


def test_port_25_on_a_load_balancer_the_rest_cluster_internal(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(controlplane, EXPOSED.format(ns=ns))
    public = eventually(
        lambda: get(controlplane, "service", "ex01-receiver-lb", ns), what="the LB Service"
    )
    assert public["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in public["spec"]["ports"]] == [25]
    assert public["spec"]["loadBalancerClass"] == "metallb.io/metallb"
    assert public["spec"]["externalTrafficPolicy"] == "Cluster"
    assert public["spec"]["ipFamilies"] == ["IPv4"]
    assert public["metadata"]["annotations"]["metallb.universe.tf/address-pool"] == "mail"
    internal = get(controlplane, "service", "ex01-receiver", ns)
    assert internal["spec"]["type"] == "ClusterIP"
    assert {p["port"] for p in internal["spec"]["ports"]} == {465, 475, 587, 717, 2525}
    assert "externalTrafficPolicy" not in internal["spec"]


QUEUED = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec:
  fqdn: mail.contoso.com
  createDefaultConnectors: false
  nextHop:
    type: Smtp
    host: hub.contoso.com
    port: 25
    {mode}
    path: /var/spool/queue
    storage: {{size: 3Gi}}
"""


def test_store_and_forward_keeps_its_queue_on_a_claim_per_replica(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(controlplane, QUEUED.format(ns=ns, mode="mode: StoreAndForward"))
    workload = eventually(lambda: get(controlplane, "statefulset", "ex01-receiver", ns))
    claim = workload["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] in ("3Gi", str(3 * 1024**3))
    mounts = workload["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "spool", "mountPath": "/var/spool/queue"} in mounts
    config = json.loads(get(controlplane, "configmap", "ex01-receiver", ns)["data"]["config.json"])
    assert config["nextHop"]["mode"] == "StoreAndForward"
    apply(controlplane, QUEUED.format(ns=ns, mode="mode: Relay"))
    eventually(lambda: get(controlplane, "deployment", "ex01-receiver", ns), what="a Deployment")
