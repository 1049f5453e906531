"""Images for the node tests, assembled offline and loaded into the node's containerd; the
stand-ins for a load balancer and a volume provisioner; clients from outside the cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from hack.node import images
from hack.node.outside import Outside
from hack.node.standins import StandIns

from ..conftest import NodeCluster
from .chart import WATCHED_NS, Release

MEASURED: list[str] = []  # figures the node tests measured, printed after the run


def measured(text: str) -> None:
    MEASURED.append(text)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("measured on the node")
        for line in MEASURED:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def standins(node: NodeCluster) -> Iterator[StandIns]:
    """LoadBalancer addresses and hostPath volumes for claims, for every node test."""
    with StandIns(node.node) as running:
        yield running


@pytest.fixture(scope="session")
def outside(node: NodeCluster) -> Iterator[Outside]:
    with Outside.start() as namespace:
        yield namespace


@pytest.fixture(scope="session")
def busybox(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    node.node.import_image(images.busybox_archive(tmp_path_factory.mktemp("images")))
    return images.BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def receiver_image(node: NodeCluster) -> str:
    """receiver/Dockerfile built offline (hack/node/images.py) and loaded into the node."""
    name, archive = images.project_archive("receiver")
    node.node.import_image(archive)
    return name


@pytest.fixture(scope="session")
def operator_image(node: NodeCluster) -> str:
    name, archive = images.project_archive("operator")
    node.node.import_image(archive)
    return name


@pytest.fixture
def node_ns(node: NodeCluster, standins: StandIns) -> Iterator[str]:
    """A namespace for one test, deleted afterwards so that its pods stop running."""
    name = f"node-{uuid.uuid4().hex[:8]}"
    node.kubectl("create", "namespace", name)
    yield name
    node.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def release(
    node: NodeCluster, standins: StandIns, operator_image: str, receiver_image: str
) -> Iterator[Release]:
    """``helm install`` of charts/smtpgate with the images built here; its operator watches
    the namespace ``mail``."""
    node.kubectl("create", "namespace", WATCHED_NS)
    running = Release(node, operator_image, receiver_image)
    measured(f"helm install --wait (1 operator replica): {running.install_or_upgrade():.1f} s")
    yield running
    running.uninstall()
    node.kubectl("delete", "namespace", WATCHED_NS, "--wait=false", check=False)
