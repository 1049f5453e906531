"""The chart on a real node: ``helm install`` with the images built offline from the
project's Dockerfiles; the operator pod becomes Ready, holds the Lease and works with its
ServiceAccount only (in-cluster config, the chart's RBAC, no admin credentials). Then
``helm upgrade``: a rolling upgrade with one replica completes (the new pod is Ready while
the old one still holds the Lease), scaling to two completes, and when the leader's pod is
deleted, or its process stops answering, the other replica takes the Lease over; the
takeover times are measured."""

from __future__ import annotations

import signal
import time

from hack.node import pods

from ..conftest import NodeCluster
from ..kube_helpers import eventually
from .chart import RELEASE_NS, Release
from .conftest import measured


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


def _roll(release: Release, replicas: int, stamp: str) -> float:
    """An upgrade that changes the pod template, so that pods are replaced."""
    release.extra = ["--set", f"operator.podAnnotations.rollout={stamp}"]
    return release.install_or_upgrade(replicas)


def _takeover(release: Release, old: str) -> float:
    started = time.monotonic()
    eventually(
        lambda: release.leader_pod() not in ("", old),
        timeout=60,
        what=f"a replica other than {old} holding the Lease",
    )
    return time.monotonic() - started


def test_helm_upgrade_with_one_and_two_replicas_and_leader_takeover(
    node: NodeCluster, release: Release
) -> None:
    took = _roll(release, 1, "one")
    measured(f"helm upgrade --wait, 1 replica, pods replaced: {took:.1f} s")
    [pod] = release.operator_pods()
    eventually(lambda: release.leader_pod() == pod["metadata"]["name"], what="the new leader")

    took = _roll(release, 2, "two")
    measured(f"helm upgrade --wait, 2 replicas, pods replaced: {took:.1f} s")
    assert len(release.operator_pods()) == 2
    leader = eventually(release.leader_pod, what="a leader")

    # The leader's pod is deleted (a drain, an eviction): it gives the Lease up on SIGTERM.
    node.kubectl("delete", "pod", "-n", RELEASE_NS, leader, "--wait=false")
    took = _takeover(release, leader)
    measured(f"operator takeover after the leader's pod is deleted: {took:.1f} s")

    # The new leader hangs (SIGSTOP: no renewal, no release): the Lease runs out first.
    leader = release.leader_pod()
    [body] = [p for p in release.operator_pods() if p["metadata"]["name"] == leader]
    pid = pods.kill(node.node, body, signal.SIGSTOP)
    try:
        took = _takeover(release, leader)
    finally:
        node.kubectl(
            "delete", "pod", "-n", RELEASE_NS, leader, "--grace-period=0", "--force", check=False
        )
        pods.resume(pid)
    measured(f"operator takeover after the leader stops renewing (lease 15 s): {took:.1f} s")
    assert took < 30

    took = _roll(release, 1, "back")
    measured(f"helm upgrade --wait back to 1 replica: {took:.1f} s")
    eventually(lambda: len(release.operator_pods()) == 1, timeout=60, what="one operator pod")
