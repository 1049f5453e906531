"""The chart on a real node: ``helm install`` with the images built offline from the
project's Dockerfiles; the operator pod becomes Ready, holds the Lease and works with its
ServiceAccount only (in-cluster config, the chart's RBAC, no admin credentials)."""

from __future__ import annotations

from ..conftest import NodeCluster
from .chart import RELEASE_NS, Release


def test_helm_install_runs_the_operator_ready_holding_the_lease(
    node: NodeCluster, release: Release
) -> None:
    pods = release.operator_pods()
    assert len(pods) == 1
    pod = pods[0]
    assert pod["status"]["phase"] == "Running"
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])
    assert release.leader_pod() == pod["metadata"]["name"]
    account = pod["spec"]["serviceAccountName"]
    assert account == "smtpgate"  # the chart's own, not the namespace default
    # the operator's identity is its ServiceAccount, whose RBAC is the chart's and no more
    who = f"system:serviceaccount:{RELEASE_NS}:{account}"
    can = node.kubectl("auth", "can-i", "--as", who, "create", "clusterrolebindings", check=False)
    assert can.stdout.strip() == "no"
    can = node.kubectl(
        "auth", "can-i", "--as", who, "list", "secrets", "-n", "kube-system", check=False
    )
    assert can.stdout.strip() == "no"
    logs = node.kubectl("logs", "-n", RELEASE_NS, pod["metadata"]["name"]).stdout
    assert "Forbidden" not in logs, logs[-3000:]
