"""Shared fixtures: the embedded control plane (session-wide) and a ready API client."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for hack.controlplane

from hack.controlplane.harness import ControlPlane  # noqa: E402
from hack.node.harness import Node, unavailable_reason  # noqa: E402

from .kube_helpers import NO_STANDIN_PREFIX, Operator, WorkloadStatusStandIn  # noqa: E402

CRDS = ROOT / "crds"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the control plane carry the ``controlplane`` marker, so that
    ``pytest -m "not controlplane"`` runs the fast ones alone."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "controlplane" in fixtures or "node" in fixtures:
            item.add_marker(pytest.mark.controlplane)
        if "node" in fixtures:
            item.add_marker(pytest.mark.node)


class Cluster:
    """The running control plane as tests use it."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.kubeconfig = str(plane.kubeconfig)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.plane.kubectl, "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done

    def api(self):  # type: ignore[no-untyped-def]
        from kubernetes import client, config

        return client.ApiClient(config.load_kube_config(config_file=self.kubeconfig) or None)


@pytest.fixture(scope="session")
def controlplane() -> Iterator[Cluster]:
    with ControlPlane.start() as plane:
        cluster = Cluster(plane)
        cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
        cluster.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/receiveconnectors.smtpgate.io",
            "crd/transportservers.smtpgate.io",
            "crd/accepteddomains.smtpgate.io",
        )
        yield cluster


class NodeCluster(Cluster):
    """A control plane of its own with one real node (hack/node): pods actually run."""

    def __init__(self, plane: ControlPlane, node: Node) -> None:
        super().__init__(plane)
        self.node = node


@pytest.fixture(scope="session")
def node() -> Iterator[NodeCluster]:
    """Separate from ``controlplane``: its own control plane, whose API server listens on
    the node's address and authorizes a kubelet, and whose controller-manager runs the
    workload controllers."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"this machine cannot run a Kubernetes node: {reason}")
    with Node.start() as running:
        cluster = NodeCluster(running.plane, running)
        cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
        yield cluster


@pytest.fixture(scope="session")
def operator(controlplane: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    standin = WorkloadStatusStandIn(controlplane.kubeconfig)
    standin.start()
    running = Operator(
        controlplane.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log"
    )
    running.start()
    yield running
    running.stop()
    standin.stop()


@pytest.fixture
def ns(controlplane: Cluster) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    controlplane.kubectl("create", "namespace", name)
    yield name
    controlplane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def nokubelet_ns(controlplane: Cluster) -> Iterator[str]:
    """A namespace the workload-status stand-in leaves alone: nothing there ever serves
    unless the test says so."""
    name = f"{NO_STANDIN_PREFIX}{uuid.uuid4().hex[:8]}"
    controlplane.kubectl("create", "namespace", name)
    yield name
    controlplane.kubectl("delete", "namespace", name, "--wait=false", check=False)
