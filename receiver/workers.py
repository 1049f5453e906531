"""A worker process per core sharing the listening ports (SO_REUSEPORT).

The parent starts the workers with the same arguments, waits until each is ready, passes
SIGTERM and SIGINT on, and starts a worker again if one dies. Connection and rate limits
are counted in each worker: with N workers a source may hold up to N times
maxInboundConnectionPerSource. One worker (the default) counts exactly. Metrics are kept in
files of prometheus-client's multiprocess mode (a folder in the temporary directory), so
that the first worker's /metrics adds up every worker's."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from prometheus_client import multiprocess

log = logging.getLogger(__name__)


def _spawn(argv: list[str], index: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
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
    if index > 0:
        args += ["--health-port", "0"]  # the first worker answers the probes
    proc = subprocess.Popen(args, pass_fds=(write_end,), env=env)
    os.close(write_end)
    return proc, read_end


def _wait_ready(read_end: int) -> bool:
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.readline().strip() == b"ready"


def supervise(argv: list[str], count: int, ready: object) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; ``ready()`` is called once all listen."""
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
        for index in range(count):
            proc, read_end = _spawn(argv, index, env)
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
                    workers[index], read_end = _spawn(argv, index, env)
                    _wait_ready(read_end)
        return max((proc.wait() for proc in workers), default=0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
