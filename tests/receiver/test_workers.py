"""Workers and CPUs: how many ``--workers auto`` starts (the CPUs the process may run on,
no more than its cgroup's CPU quota), and whether each keeps to a CPU of its own."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from smtpgate.receiver import workers

from .conftest import free_port
from .helpers import start_process

TWO_CPUS = sorted(os.sched_getaffinity(0))[:2]
needs_two_cpus = pytest.mark.skipif(len(TWO_CPUS) < 2, reason="needs two CPUs to place workers on")


def _children(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    return sorted(int(p) for p in path.read_text().split()) if path.exists() else []


def _cpus(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of ``pid``."""
    found = set()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(frozenset(_parse_list(line.split(":", 1)[1].strip())))
    return found


def _parse_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _send(port: int, count: int) -> None:
    for n in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("s@example.org", ["u@contoso.com"], f"Subject: {n}\r\n\r\nbody\r\n")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def _two_free_workers_serve(proc: subprocess.Popen[bytes], port: int) -> None:
    """Two workers, every thread of each free on both CPUs, and mail through them; then
    the receiver stops."""
    try:
        children = _children(proc.pid)
        assert len(children) == 2
        for pid in children:
            assert _cpus(pid) == {frozenset(TWO_CPUS)}
        _send(port, 2)
    finally:
        _stop(proc)


def _on(cpus: list[int]) -> tuple[str, ...]:
    return ("taskset", "-c", ",".join(map(str, cpus)))


# -- the plan ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers_arg", "affinity", "allowed", "quota", "count", "cpus"),
    [
        ("auto", "auto", [0, 1], None, 2, (0, 1)),  # a worker per CPU, each on its own
        ("auto", "auto", [2, 5, 7], None, 3, (2, 5, 7)),  # the CPUs the process may use
        ("auto", "auto", [0, 1, 2, 3], 2.0, 2, (None, None)),  # a quota of 2 CPUs: 2, free
        ("auto", "auto", [0, 1, 2, 3], 1.5, 2, (None, None)),  # 1.5 CPUs: rounded up
        ("auto", "auto", [0, 1, 2, 3], 0.5, 1, (None,)),  # less than a CPU: one worker
        ("auto", "auto", [0, 1], 4.0, 2, (0, 1)),  # a quota above the CPUs changes nothing
        ("auto", "auto", [3], None, 1, (None,)),  # one CPU: one worker, nothing to pin
        ("auto", "none", [0, 1], None, 2, (None, None)),  # none: the kernel places them
        ("2", "auto", [0, 1], None, 2, (0, 1)),  # as many as the CPUs: pinned
        ("2", "auto", [0, 1, 2, 3], None, 2, (None, None)),  # fewer than the CPUs: free
        ("4", "auto", [0, 1], None, 4, (None,) * 4),  # more than the CPUs: free
        ("2", "auto", [0, 1], 1.0, 2, (None, None)),  # a quota below the CPUs: free
        ("1", "auto", [0, 1], None, 1, (None,)),  # the default: one worker, unpinned
    ],
)
def test_the_plan_pins_workers_only_with_one_per_cpu_the_process_may_use(
    workers_arg: str,
    affinity: str,
    allowed: list[int],
    quota: float | None,
    count: int,
    cpus: tuple[int | None, ...],
) -> None:
    plan = workers.plan(workers_arg, affinity, allowed, quota)
    assert (plan.count, plan.cpus) == (count, cpus), plan.reason


def _proc_files(tmp: pathlib.Path, cgroup: str, mountinfo: str) -> pathlib.Path:
    proc = tmp / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def test_the_quota_is_the_smallest_cpu_max_from_the_process_cgroup_up(
    tmp_path: pathlib.Path,
) -> None:
    root = tmp_path / "unified"
    (root / "pods" / "pod1" / "receiver").mkdir(parents=True)
    (root / "pods" / "cpu.max").write_text("300000 100000\n")  # 3 CPUs for all the pods
    (root / "pods" / "pod1" / "cpu.max").write_text("150000 100000\n")  # 1.5 for this one
    (root / "pods" / "pod1" / "receiver" / "cpu.max").write_text("max 100000\n")
    proc = _proc_files(
        tmp_path,
        "0::/pods/pod1/receiver\n",
        f"30 25 0:26 / {root} rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
    )
    assert workers.cpu_quota(proc) == 1.5


def test_the_quota_of_a_cgroup_v1_cpu_hierarchy(tmp_path: pathlib.Path) -> None:
    mount = tmp_path / "cpu,cpuacct"
    (mount / "kubepods" / "pod2").mkdir(parents=True)
    (mount / "kubepods" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota here
    (mount / "kubepods" / "cpu.cfs_period_us").write_text("100000\n")
    (mount / "kubepods" / "pod2" / "cpu.cfs_quota_us").write_text("250000\n")
    (mount / "kubepods" / "pod2" / "cpu.cfs_period_us").write_text("100000\n")
    proc = _proc_files(
        tmp_path,
        "5:memory:/kubepods/pod2\n3:cpu,cpuacct:/kubepods/pod2\n0::/\n",
        f"40 25 0:35 / {mount} rw - cgroup cgroup rw,cpu,cpuacct\n"
        f"41 25 0:36 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory\n",
    )
    assert workers.cpu_quota(proc) == 2.5


def test_no_quota_without_a_limit_or_a_cgroup_to_read(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cpu.max").write_text("max 100000\n")
    proc = _proc_files(tmp_path, "0::/\n", f"30 25 0:26 / {root} rw - cgroup2 cgroup2 rw\n")
    assert workers.cpu_quota(proc) is None
    assert workers.cpu_quota(tmp_path / "missing") is None


# -- a pinned worker's own threads -------------------------------------------------------

HELPERS = """
import os, sys, threading
from smtpgate.receiver import protocol_log, spill, users, workers
allowed = sorted(os.sched_getaffinity(0))
workers.pin(int(sys.argv[1]))
loop_thread = sorted(os.sched_getaffinity(0))
bcrypt = users._checkers().submit(os.sched_getaffinity, 0).result()
spilling = spill.writers().submit(os.sched_getaffinity, 0).result()
log = protocol_log.ProtocolLog(os.devnull)
log.write("c", "s", 0, "l", "r", "+", "", "")
writer = next(t for t in threading.enumerate() if t.name == "protocol-log")
print(allowed, loop_thread, sorted(bcrypt), sorted(spilling))
print(sorted(os.sched_getaffinity(writer.native_id)), users._checkers()._max_workers)
log.close()
"""


def _helpers(cpu: int) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", HELPERS, str(cpu)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [out.stdout, out.stderr]


@needs_two_cpus
def test_a_pinned_workers_helper_threads_run_on_every_cpu_it_may_use() -> None:
    """bcrypt checks, spill writes, the protocol log (and the GSSAPI, relay and queue
    threads, made the same way) are not held behind the event loop on its one CPU."""
    out, _ = _helpers(TWO_CPUS[1])
    first, second = out.splitlines()
    allowed = sorted(os.sched_getaffinity(0))
    assert first == f"{allowed} {[TWO_CPUS[1]]} {allowed} {allowed}"
    assert second == f"{allowed} {len(allowed)}"  # the bcrypt pool sized by them all


def test_a_cpu_no_longer_allowed_leaves_the_worker_unpinned_with_a_warning() -> None:
    out, err = _helpers(4096)  # no such CPU (a cpuset that shrank since the plan)
    allowed = sorted(os.sched_getaffinity(0))
    assert out.splitlines()[0] == f"{allowed} {allowed} {allowed} {allowed}"
    assert "cannot keep to CPU 4096" in err


# -- the receiver as a process ----------------------------------------------------------


@needs_two_cpus
def test_a_worker_per_cpu_keeps_to_its_own_cpu_and_a_new_one_takes_its_place(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()
    with (tmp_path / "log").open("wb") as log:
        proc = start_process(tmp_path, port, "--workers", "auto", wrap=_on(TWO_CPUS), stderr=log)
    try:
        placement = f"2 workers, each pinned to its CPU ({TWO_CPUS[0]},{TWO_CPUS[1]})"
        assert placement in (tmp_path / "log").read_text()  # the supervisor says so at start
        children = _children(proc.pid)
        assert len(children) == 2
        placed = {pid: os.sched_getaffinity(pid) for pid in children}  # the loop's thread
        # Each worker's event loop on a CPU of its own; its other threads on that CPU or,
        # helpers (the protocol log's writer), on both.
        assert sorted(map(sorted, placed.values())) == [[TWO_CPUS[0]], [TWO_CPUS[1]]]
        for pid, cpu in placed.items():
            assert _cpus(pid) <= {frozenset(cpu), frozenset(TWO_CPUS)}
        _send(port, 10)
        assert len(list((tmp_path / "spool" / "new").iterdir())) == 10
        gone = children[0]
        os.kill(gone, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:  # the supervisor looks every 0.5 s; the new worker pins itself at start
            now = [pid for pid in _children(proc.pid) if pid not in children]
            if now and os.sched_getaffinity(now[0]) == placed[gone]:
                break
            assert time.monotonic() < deadline, f"no worker on {placed[gone]} took {gone}'s place"
            time.sleep(0.1)
        _send(port, 10)
        assert len(list((tmp_path / "spool" / "new").iterdir())) == 20
    finally:
        _stop(proc)


@needs_two_cpus
def test_cpu_affinity_none_leaves_the_workers_to_the_kernel(tmp_path: pathlib.Path) -> None:
    port = free_port()
    proc = start_process(
        tmp_path, port, "--workers", "auto", "--cpu-affinity", "none", wrap=_on(TWO_CPUS)
    )
    _two_free_workers_serve(proc, port)


def test_workers_auto_on_one_cpu_is_one_process(tmp_path: pathlib.Path) -> None:
    port = free_port()
    proc = start_process(
        tmp_path, port, "--workers", "auto", wrap=_on(sorted(os.sched_getaffinity(0))[:1])
    )
    try:
        assert _children(proc.pid) == []
        _send(port, 3)
        assert len(list((tmp_path / "spool" / "new").iterdir())) == 3
    finally:
        _stop(proc)


# -- a real CPU quota ---------------------------------------------------------------------


@pytest.fixture
def quota_cgroup() -> Iterator[tuple[pathlib.Path, int]]:
    """A cgroup of the machine's own (v1 cpu, or v2 with the cpu controller) in which a
    quota can be set; with its version."""
    v1 = pathlib.Path("/sys/fs/cgroup/cpu")
    v2 = pathlib.Path("/sys/fs/cgroup")
    name = f"smtpgate-test-{uuid.uuid4().hex[:8]}"
    control = v2 / "cgroup.subtree_control"
    if (v1 / "cpu.cfs_quota_us").exists() and os.access(v1, os.W_OK):
        folder, version = v1 / name, 1
    elif control.exists() and "cpu" in control.read_text().split():
        folder, version = v2 / name, 2
    else:
        pytest.skip("no cgroup cpu controller here")
    try:
        folder.mkdir()
    except OSError as error:  # a hierarchy mounted read-only (a container)
        pytest.skip(f"cannot make a cgroup here: {error}")
    try:
        yield folder, version
    finally:
        for _ in range(50):
            try:
                folder.rmdir()
                break
            except OSError:  # its last process still leaving
                time.sleep(0.1)


def _limit(folder: pathlib.Path, version: int, cpus: float) -> None:
    period = 100000
    if version == 2:
        (folder / "cpu.max").write_text(f"{int(cpus * period)} {period}\n")
    else:
        (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
        (folder / "cpu.cfs_quota_us").write_text(f"{int(cpus * period)}\n")


def _in_cgroup(folder: pathlib.Path, cpus: list[int]) -> tuple[str, ...]:
    script = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    return ("sh", "-c", script, str(folder), *_on(cpus))


@needs_two_cpus
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("taskset"), reason="needs root")
def test_workers_auto_starts_no_more_workers_than_the_cgroup_quota_allows(
    tmp_path: pathlib.Path, quota_cgroup: tuple[pathlib.Path, int]
) -> None:
    folder, version = quota_cgroup
    _limit(folder, version, 1.0)  # one CPU's time on two CPUs: one worker
    port = free_port()
    proc = start_process(tmp_path, port, "--workers", "auto", wrap=_in_cgroup(folder, TWO_CPUS))
    try:
        assert _children(proc.pid) == []
        assert _cpus(proc.pid) == {frozenset(TWO_CPUS)}
        _send(port, 2)
    finally:
        _stop(proc)
    _limit(folder, version, 1.5)  # rounded up to two workers, left to the kernel
    (tmp_path / "second").mkdir()
    port = free_port()
    proc = start_process(
        tmp_path / "second", port, "--workers", "auto", wrap=_in_cgroup(folder, TWO_CPUS)
    )
    _two_free_workers_serve(proc, port)
