"""A worker process per CPU sharing the listening ports (SO_REUSEPORT).

The parent starts the workers with the same arguments, waits until each is ready, passes
SIGTERM and SIGINT on, and starts a worker again if one dies. ``--workers auto`` counts the
CPUs the process may run on (its affinity), no more than its cgroup's CPU quota allows;
when there is a worker for every one of those CPUs, each worker keeps to a CPU of its own
(``--cpu-affinity auto``, the default; ``none`` lets the kernel move them), its helper
threads excepted (``free_thread``). Connection and
rate limits are counted in each worker: with N workers a source may hold up to N times
maxInboundConnectionPerSource. One worker (the default) counts exactly. Metrics are kept in
files of prometheus-client's multiprocess mode (a folder in the temporary directory), so
that the first worker's /metrics adds up every worker's."""

from __future__ import annotations

import logging
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import multiprocess

log = logging.getLogger(__name__)
PROC = pathlib.Path("/proc/self")


@dataclass(frozen=True)
class Plan:
    """How many workers, the CPU each keeps to (None: any the process may use), and why."""

    count: int
    cpus: tuple[int | None, ...]
    reason: str


def plan(workers: str, affinity: str, allowed: list[int], quota: float | None) -> Plan:
    """``--workers`` (a number, or ``auto``) and ``--cpu-affinity`` (``auto`` or ``none``)
    for a process that may run on the CPUs ``allowed`` with a cgroup CPU quota of
    ``quota`` CPUs (None: no quota). A worker keeps to a CPU only when every allowed CPU has
    one worker: a CPU shared with others' work, or a quota smaller than the CPUs, leaves
    the kernel to place them."""
    if workers == "auto":
        count = len(allowed) if quota is None else max(1, min(len(allowed), math.ceil(quota)))
    else:
        count = int(workers)
    unpinned = (None,) * count
    if affinity == "none":
        return Plan(count, unpinned, "not pinned (--cpu-affinity none)")
    if count == 1:
        return Plan(count, unpinned, "one worker")
    if count != len(allowed):
        return Plan(
            count,
            unpinned,
            f"not pinned: {count} workers for {len(allowed)} CPUs (pinned only one per CPU)",
        )
    if quota is not None and quota < len(allowed):
        return Plan(
            count, unpinned, f"not pinned: a CPU quota of {quota:g} CPUs, fewer than the CPUs"
        )
    return Plan(count, tuple(allowed), f"each pinned to its CPU ({','.join(map(str, allowed))})")


def cpu_quota(proc: pathlib.Path = PROC) -> float | None:
    """The CPU time the process's cgroup may use, in CPUs (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``, the smallest along the way up to the
    hierarchy's mount), or None without a quota or a readable cgroup."""
    try:
        return _cpu_quota(proc)
    except (OSError, ValueError):  # a hierarchy this cannot read: no quota known
        return None


def _cpu_quota(proc: pathlib.Path) -> float | None:
    memberships = (proc / "cgroup").read_text().splitlines()
    mounts = (proc / "mountinfo").read_text().splitlines()
    found: list[float] = []
    for line in mounts:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        root, point, kind = fields[3], pathlib.Path(fields[4]), fields[dash + 1]
        options = set(fields[dash + 3].split(",")) if len(fields) > dash + 3 else set()
        if kind == "cgroup2":
            path, version = _member_path(memberships, lambda names: names == ""), 2
        elif kind == "cgroup" and "cpu" in options:
            path, version = _member_path(memberships, lambda names: "cpu" in names.split(",")), 1
        else:
            continue
        if path is None:
            continue
        relative = path[len(root) :] if path.startswith(root) else path
        folder = point / relative.lstrip("/")
        if not folder.is_dir():
            folder = point
        while True:
            limit = _quota_in(folder, version)
            if limit is not None:
                found.append(limit)
            if folder == point or point not in folder.parents:
                break
            folder = folder.parent
    return min(found) if found else None


def _member_path(memberships: list[str], controllers: Callable[[str], bool]) -> str | None:
    """The process's cgroup in the hierarchy whose controller list ``controllers`` takes
    (``/proc/self/cgroup``: ``id:controllers:path``; cgroup v2's list is empty)."""
    for line in memberships:
        _, names, path = line.split(":", 2)
        if controllers(names):
            return path
    return None


def _quota_in(folder: pathlib.Path, version: int) -> float | None:
    try:
        if version == 2:
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit():
            return None
        return int(quota) / int(period) if int(quota) > 0 and int(period) > 0 else None
    except OSError:
        return None


# The CPUs the process could run on before it kept to one (None: it never did).
ALLOWED: frozenset[int] | None = None


def pin(cpu: int | None) -> None:
    """Keep this process, before it starts a thread, to ``cpu`` (None: leave it be). A CPU
    no longer allowed (a cpuset that shrank since the plan) leaves it unpinned, said once."""
    global ALLOWED
    if cpu is None:
        return
    allowed = frozenset(os.sched_getaffinity(0))
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as error:
        log.warning("cannot keep to CPU %d (%s): this worker is left to the kernel", cpu, error)
        return
    ALLOWED = allowed


def free_thread() -> None:
    """For a helper thread of a pinned worker (bcrypt, GSSAPI, relays, the queue, spill
    files, the protocol log; ``initializer`` of its pool, or its target's first call): the
    CPUs the process had before it kept to one, so that such work runs beside the event
    loop's CPU rather than behind it. Nothing where the worker is not pinned."""
    if ALLOWED is not None:
        os.sched_setaffinity(0, ALLOWED)


def cpu_count() -> int:
    """The CPUs this process may use (its pin aside): what a helper pool is sized by."""
    return len(ALLOWED if ALLOWED is not None else os.sched_getaffinity(0))


def _spawn(
    argv: list[str], index: int, env: dict[str, str], cpu: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    read_end, write_end = os.pipe()
    args = [
        sys.executable,
        "-m",
        "smtpgate.receiver",
        *argv,
        "--workers",
        "1",
        "--reuse-port",
        "--ready-fd",
        str(write_end),
    ]
    if cpu is not None:
        args += ["--pin-cpu", str(cpu)]
    if index > 0:
        args += ["--health-port", "0"]  # the first worker answers the probes
    proc = subprocess.Popen(args, pass_fds=(write_end,), env=env)
    os.close(write_end)
    return proc, read_end


def _wait_ready(read_end: int) -> bool:
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.readline().strip() == b"ready"


def supervise(argv: list[str], workers_plan: Plan, ready: object) -> int:
    """Run the plan's workers until SIGTERM/SIGINT; ``ready()`` is called once all listen.
    A worker started again keeps the CPU of the one it replaces."""
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signum)

    workers: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    folder = tempfile.mkdtemp(prefix="smtpgate-metrics-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=folder)
    try:
        log.info("%d workers, %s", workers_plan.count, workers_plan.reason)
        for index, cpu in enumerate(workers_plan.cpus):
            proc, read_end = _spawn(argv, index, env, cpu)
            workers.append(proc)
            if not _wait_ready(read_end):
                forward(signal.SIGTERM, None)
                return 1
        ready()  # type: ignore[operator]
        while not stopping:
            time.sleep(0.5)
            for index, proc in enumerate(workers):
                if proc.poll() is not None and not stopping:
                    log.error("worker %d exited with %s; starting it again", index, proc.returncode)
                    multiprocess.mark_process_dead(proc.pid, folder)
                    workers[index], read_end = _spawn(argv, index, env, workers_plan.cpus[index])
                    _wait_ready(read_end)
        return max((proc.wait() for proc in workers), default=0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
