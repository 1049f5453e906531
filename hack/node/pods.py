"""A pod's containers as the host sees them: the process a container runs (for ``kill -9``
from outside, as the kernel's OOM killer or a crash would end it) and the memory limit its
cgroup really enforces."""

from __future__ import annotations

import json
import os
import pathlib
import signal
from contextlib import suppress
from typing import Any

from hack.node.harness import Node


def container_pid(node: Node, pod: dict[str, Any], index: int = 0) -> int:
    """The host PID of a pod's container (its first process), through CRI."""
    container = pod["status"]["containerStatuses"][index]["containerID"].split("://", 1)[1]
    info = json.loads(node._crictl("inspect", container).stdout)
    return int(info["info"]["pid"])


def kill(node: Node, pod: dict[str, Any], signum: int = signal.SIGKILL) -> int:
    pid = container_pid(node, pod)
    os.kill(pid, signum)
    return pid


def resume(pid: int) -> None:
    """SIGCONT, should the process still exist."""
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def memory_limit(pid: int) -> int:
    """The memory limit (bytes) of the cgroup ``pid`` runs in (cgroup v1 or v2)."""
    for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return int(
                pathlib.Path(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read_text()
            )
        if controllers == "":
            text = pathlib.Path(f"/sys/fs/cgroup{path}/memory.max").read_text().strip()
            if text != "max":
                return int(text)
    raise LookupError(f"no memory cgroup for {pid}")


def memory_peak(pid: int) -> int:
    """The most memory (bytes) the cgroup of ``pid`` has used."""
    for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = pathlib.Path(f"/sys/fs/cgroup/memory{path}")
            return int((folder / "memory.max_usage_in_bytes").read_text())
        if controllers == "":
            return int(pathlib.Path(f"/sys/fs/cgroup{path}/memory.peak").read_text())
    raise LookupError(f"no memory cgroup for {pid}")


def memory_rss(pid: int) -> int:
    """Anonymous memory (bytes) the cgroup of ``pid`` uses now: what cannot be reclaimed
    like the page cache of the spool's files can."""
    for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            stat = pathlib.Path(f"/sys/fs/cgroup/memory{path}/memory.stat").read_text()
            key = "total_rss"
            break
        if controllers == "":
            stat = pathlib.Path(f"/sys/fs/cgroup{path}/memory.stat").read_text()
            key = "anon"
            break
    else:
        raise LookupError(f"no memory cgroup for {pid}")
    values = dict(line.split() for line in stat.splitlines())
    return int(values[key])
