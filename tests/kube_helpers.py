"""Helpers for tests against the control plane: the operator process, polling, reading."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    """``python -m smtpgate.operator`` running against the test control plane."""

    def __init__(
        self,
        kubeconfig: str,
        log: pathlib.Path,
        lease_namespace: str = "default",
        namespaces: list[str] | None = None,
    ) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.lease_namespace, self.namespaces = lease_namespace, namespaces or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(
            os.environ,
            KUBECONFIG=self.kubeconfig,
            SMTPGATE_RESYNC_SECONDS="5",
            SMTPGATE_RECEIVER_IMAGE="smtpgate/receiver:test",
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "smtpgate.operator",
                    "--liveness",
                    f"http://127.0.0.1:{_free_port()}/healthz",
                    "--lease-namespace",
                    self.lease_namespace,
                    "--log-level",
                    "INFO",
                    *(f"--namespace={n}" for n in self.namespaces),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def eventually(check: Callable[[], Any], timeout: float = 45, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (and no AssertionError)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, KeyError, IndexError, json.JSONDecodeError) as err:
            last = err
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {last}")


def get(controlplane: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    done = controlplane.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return json.loads(done.stdout)


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return cond
    raise AssertionError(f"no {kind} condition yet")
