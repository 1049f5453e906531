"""Images for the node tests, assembled offline and loaded into the node's containerd."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from hack.node import images

from ..conftest import NodeCluster


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


@pytest.fixture
def node_ns(node: NodeCluster) -> Iterator[str]:
    """A namespace for one test, deleted afterwards so that its pods stop running."""
    name = f"node-{uuid.uuid4().hex[:8]}"
    node.kubectl("create", "namespace", name)
    yield name
    node.kubectl("delete", "namespace", name, "--wait=false", check=False)
