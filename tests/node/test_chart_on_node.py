"""The chart on a real node: ``helm install`` with the images built offline from the
project's Dockerfiles; the operator pod becomes Ready with its ServiceAccount only and
holds the Lease; a TransportServer it reconciles becomes a receiver pod that answers SMTP
through its ClusterIP and spools to a static local PersistentVolume."""

from __future__ import annotations

import json
import os
import subprocess

from hack.node import images

from ..conftest import ROOT, NodeCluster
from ..kube_helpers import eventually
from .test_receiver_pod import _conversation

CHART = ROOT / "charts" / "smtpgate"
RELEASE_NS = "smtpgate-system"


def _repo_tag(name: str) -> tuple[str, str]:
    repository, tag = name.rsplit(":", 1)
    return repository, tag


def test_helm_install_runs_the_operator_and_a_receiver(
    node: NodeCluster, receiver_image: str, node_ns: str
) -> None:
    ns = node_ns
    operator_image, archive = images.project_archive("operator")
    node.node.import_image(archive)
    op_repo, op_tag = _repo_tag(operator_image)
    rx_repo, rx_tag = _repo_tag(receiver_image)
    done = subprocess.run(
        [
            node.plane.helm,
            "--kubeconfig",
            node.kubeconfig,
            "install",
            "smtpgate",
            str(CHART),
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--set",
            "crds.install=false",  # the fixture applied crds/ already
            "--set",
            f"operator.watchNamespaces={{{ns}}}",  # other node tests play operator themselves
            "--set",
            f"operator.image.repository={op_repo}",
            "--set",
            f"operator.image.tag={op_tag}",
            "--set",
            f"receiver.image.repository={rx_repo}",
            "--set",
            f"receiver.image.tag={rx_tag}",
            "--wait",
            "--timeout",
            "180s",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if done.returncode != 0:
        pods = node.kubectl("describe", "pods", "-n", RELEASE_NS, check=False).stdout
        logs = node.kubectl("logs", "-n", RELEASE_NS, "deploy/smtpgate-operator", check=False)
        raise AssertionError(f"{done.stderr}\n{pods[-4000:]}\n{logs.stdout[-4000:]}{logs.stderr}")
    try:
        lease = json.loads(node.kubectl("get", "lease", "-A", "-o", "json").stdout)["items"]
        holders = {
            item["metadata"]["name"]: item["spec"].get("holderIdentity", "") for item in lease
        }
        assert holders.get("smtpgate-operator", "").startswith("smtpgate-operator-"), holders

        spool = node.node.workdir / "volumes" / ns
        spool.mkdir(parents=True)
        os.chown(spool, 10001, 10001)
        node.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"spool-{ns}"},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": str(spool), "type": "Directory"},
                    },
                }
            ),
        )
        manifests = [
            {
                "apiVersion": "smtpgate.io/v1alpha1",
                "kind": "AcceptedDomain",
                "metadata": {"name": "contoso", "namespace": ns},
                "spec": {"domainName": "contoso.com"},
            },
            {
                "apiVersion": "smtpgate.io/v1alpha1",
                "kind": "TransportServer",
                "metadata": {"name": "ex01", "namespace": ns},
                "spec": {
                    "fqdn": "mail.contoso.com",
                    "role": "Edge",
                    "exposure": {"type": "ClusterIP"},
                },
            },
        ]
        for body in manifests:
            node.kubectl("apply", "-f", "-", input=json.dumps(body))

        def ready() -> bool:
            done = node.kubectl(
                "get", "transportserver", "ex01", "-n", ns, "-o", "json", check=False
            )
            conditions = json.loads(done.stdout).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        try:
            eventually(ready, timeout=180, what="TransportServer ex01 Ready")
        except AssertionError:
            status = node.kubectl(
                "get", "transportserver,sts,pods,pvc,svc", "-n", ns, "-o", "wide", check=False
            ).stdout
            pods = node.kubectl("describe", "pods", "-n", ns, check=False).stdout
            logs = node.kubectl("logs", "-n", RELEASE_NS, "deploy/smtpgate-operator", check=False)
            raise AssertionError(f"{status}\n{pods[-3000:]}\n{logs.stdout[-3000:]}") from None
        services = json.loads(node.kubectl("get", "svc", "-n", ns, "-o", "json").stdout)["items"]
        port25 = [s for s in services if any(p["port"] == 25 for p in s["spec"]["ports"])]
        assert port25, services
        banner = _conversation(port25[0]["spec"]["clusterIP"], 25, "via-operator")
        assert "mail.contoso.com" in banner
        eventually(
            lambda: any(
                "via-operator" in m.read_text(errors="replace") for m in spool.rglob("new/*")
            ),
            timeout=30,
            what="the message in the spool on the PersistentVolume",
        )
    finally:
        subprocess.run(
            [
                node.plane.helm,
                "--kubeconfig",
                node.kubeconfig,
                "uninstall",
                "smtpgate",
                "--namespace",
                RELEASE_NS,
                "--wait",
                "--timeout",
                "60s",
            ],
            capture_output=True,
            timeout=90,
            check=False,
        )
