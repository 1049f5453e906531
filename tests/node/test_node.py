"""The harness's node runs pods: a Pod from a locally assembled image becomes Running and
Ready and its output reaches ``kubectl logs``; a Deployment rolls out; a Service answers
through kube-proxy and the pod IP from this host."""

from __future__ import annotations

import json
import socket

from ..conftest import NodeCluster
from ..kube_helpers import eventually


def _http_get(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return sock.makefile("rb").read().decode(errors="replace")


def _body(host: str, port: int) -> str:
    """The last line of the answer, or "" while nothing answers (rules not synced yet)."""
    try:
        return _http_get(host, port).splitlines()[-1]
    except OSError:
        return ""


def test_pod_runs_ready_and_logs(node: NodeCluster, busybox: str, node_ns: str) -> None:
    ns = node_ns
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hello", "namespace": ns},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "hello",
                    "image": busybox,
                    "imagePullPolicy": "Never",
                    "command": [
                        "sh",
                        "-c",
                        "echo hello from the node; touch /tmp/ok; exec sleep 3600",
                    ],
                    "readinessProbe": {
                        "exec": {"command": ["test", "-f", "/tmp/ok"]},
                        "periodSeconds": 1,
                    },
                }
            ],
        },
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(pod))
    node.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/hello", "--timeout=90s")
    status = json.loads(node.kubectl("get", "-n", ns, "pod/hello", "-o", "json").stdout)["status"]
    assert status["phase"] == "Running"
    assert status["podIP"].startswith(str(node.node.pod_network.network_address)[:-1])
    assert node.kubectl("logs", "-n", ns, "hello").stdout == "hello from the node\n"


def test_deployment_rolls_out_and_serves(node: NodeCluster, busybox: str, node_ns: str) -> None:
    ns = node_ns
    labels = {"app": "web"}
    script = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "web",
                            "image": busybox,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", script],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    node.kubectl("apply", "-f", "-", input=json.dumps(service))
    node.kubectl("rollout", "status", "-n", ns, "deployment/web", "--timeout=120s")
    pods = json.loads(node.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    names = {p["metadata"]["name"] for p in pods}
    assert len(names) == 2
    for pod in pods:  # the pod IP, straight over the node's bridge
        assert pod["metadata"]["name"] in _http_get(pod["status"]["podIP"], 8080)
    if node.node.kube_proxy != "iptables":
        return  # the reason is in node.node.kube_proxy; pod IPs were shown above
    cluster_ip = json.loads(node.kubectl("get", "svc", "-n", ns, "web", "-o", "json").stdout)[
        "spec"
    ]["clusterIP"]
    eventually(
        lambda: {_body(cluster_ip, 80) for _ in range(20)} >= names,
        timeout=60,
        what=f"both pods answering on ClusterIP {cluster_ip} (kube-proxy)",
    )


WHOAMI = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
request = urllib.request.Request(
    f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}',
    headers={"Authorization": "Bearer " + open(f"{sa}/token").read(),
             "Content-Type": "application/json"},
)
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    print(json.load(response)["status"]["userInfo"]["username"])
"""


def test_pod_reaches_the_api_server_in_cluster(
    node: NodeCluster, receiver_image: str, node_ns: str
) -> None:
    ns = node_ns
    """In-cluster config as the operator pod uses it: the `kubernetes` Service (kube-proxy
    to the API server on the node's address), the projected token and CA."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "whoami", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "whoami",
                    "image": receiver_image,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", WHOAMI],
                }
            ],
        },
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(pod))
    node.kubectl(
        "wait",
        "-n",
        ns,
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/whoami",
        "--timeout=90s",
        check=False,
    )
    logs = node.kubectl("logs", "-n", ns, "whoami", check=False)
    assert logs.stdout.strip() == f"system:serviceaccount:{ns}:default", logs.stdout + logs.stderr
