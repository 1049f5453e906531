"""``helm`` against the node, and the chart's release as the node tests share it: the
operator watches one namespace of its own (other node tests play operator by hand in
theirs)."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field

from ..conftest import ROOT, NodeCluster
from ..kube_helpers import eventually

CHART = ROOT / "charts" / "smtpgate"
RELEASE_NS = "smtpgate-system"
WATCHED_NS = "mail"


def _repo_tag(name: str) -> tuple[str, str]:
    repository, tag = name.rsplit(":", 1)
    return repository, tag


@dataclass
class Release:
    node: NodeCluster
    operator_image: str
    receiver_image: str
    namespace: str = WATCHED_NS
    extra: list[str] = field(default_factory=list)  # more helm arguments for upgrades

    def helm(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.node.plane.helm, "--kubeconfig", self.node.kubeconfig, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def values(self, replicas: int) -> list[str]:
        op_repo, op_tag = _repo_tag(self.operator_image)
        rx_repo, rx_tag = _repo_tag(self.receiver_image)
        sets = {
            "crds.install": "false",  # the node fixture applied crds/ already
            "operator.replicas": str(replicas),
            "operator.watchNamespaces": f"{{{self.namespace}}}",
            "operator.image.repository": op_repo,
            "operator.image.tag": op_tag,
            "receiver.image.repository": rx_repo,
            "receiver.image.tag": rx_tag,
        }
        return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]

    def install_or_upgrade(self, replicas: int = 1) -> float:
        """``helm upgrade --install --wait``; returns how long it took."""
        started = time.monotonic()
        done = self.helm(
            "upgrade",
            "--install",
            "smtpgate",
            str(CHART),
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            *self.values(replicas),
            *self.extra,
            "--wait",
            "--timeout",
            "180s",
        )
        if done.returncode != 0:
            raise AssertionError(f"{done.stderr}\n{self.describe()}")
        return time.monotonic() - started

    def uninstall(self) -> None:
        self.helm("uninstall", "smtpgate", "--namespace", RELEASE_NS, "--wait", "--timeout", "60s")

    def describe(self) -> str:
        pods = self.node.kubectl("describe", "pods", "-n", RELEASE_NS, check=False).stdout
        logs = self.node.kubectl(
            "logs", "-n", RELEASE_NS, "deploy/smtpgate-operator", "--tail=60", check=False
        )
        return f"{pods[-4000:]}\n{logs.stdout[-4000:]}{logs.stderr}"

    def leader_pod(self) -> str:
        """The pod whose operator holds the Lease (identity ``<pod name>-<pid>``)."""
        return self.leader().rsplit("-", 1)[0]

    def leader(self) -> str:
        lease = json.loads(
            self.node.kubectl(
                "get", "lease", "-n", RELEASE_NS, "smtpgate-operator", "-o", "json"
            ).stdout
        )
        return str(lease["spec"].get("holderIdentity") or "")

    def operator_pods(self) -> list[dict]:  # type: ignore[type-arg]
        """The operator's pods, less those being deleted."""
        out = self.node.kubectl(
            "get",
            "pods",
            "-n",
            RELEASE_NS,
            "-l",
            "app.kubernetes.io/name=smtpgate",
            "-o",
            "json",
        ).stdout
        items = json.loads(out)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]  # not leaving

    def wait_ready(self, kind: str, name: str, timeout: float = 180) -> None:
        """A TransportServer (or connector) of the watched namespace reports Ready."""

        def ready() -> bool:
            done = self.node.kubectl(
                "get", kind, name, "-n", self.namespace, "-o", "json", check=False
            )
            if done.returncode != 0:
                return False
            conditions = json.loads(done.stdout).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        try:
            eventually(ready, timeout=timeout, what=f"{kind} {name} Ready")
        except AssertionError:
            status = self.node.kubectl(
                "get",
                "transportserver,sts,deploy,pods,pvc,svc",
                "-n",
                self.namespace,
                "-o",
                "wide",
                check=False,
            ).stdout
            pods = self.node.kubectl("describe", "pods", "-n", self.namespace, check=False).stdout
            raise AssertionError(f"{status}\n{pods[-3000:]}\n{self.describe()}") from None
