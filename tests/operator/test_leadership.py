"""One writer at a time, measured in the API server's audit log: a standby is healthy but
silent, a deposed leader stops writing, SIGTERM hands the Lease over at once, and an API
server that is away for a minute delays the operator without ending it."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ..kube_helpers import Operator, condition, eventually, get, receiver_config, writes_by

SERVER = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec: {{fqdn: mail.contoso.com, createDefaultConnectors: false}}
---
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: partner, namespace: {ns}}}
spec:
  server: ex01
  usage: Internet  # anonymous senders: a Partner connector would need domain security
  bindings: ["0.0.0.0:2526"]
  remoteIPRanges: ["198.51.100.0/24"]
  maxMessageSize: {size}
"""


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _size(controlplane: Any, ns: str) -> int:
    config = receiver_config(controlplane, ns)
    partner = next(c for c in config["connectors"] if c["name"] == "partner")
    return int(partner["limits"]["maxMessageSize"])


def _holder(controlplane: Any, ns: str) -> str | None:
    done = controlplane.kubectl(
        "get", "lease", "smtpgate-operator", "-n", ns, "-o", "json", check=False
    )
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)["spec"].get("holderIdentity")


@pytest.fixture
def pair(
    controlplane: Any, operator: Any, ns: str, tmp_path: Any
) -> Iterator[tuple[Operator, Operator]]:
    """Two replicas watching ``ns`` with their Lease there; the session's operator steps aside
    so that every write in ``ns`` is one of theirs."""
    first = Operator(
        controlplane.kubeconfig, tmp_path / "first.log", lease_namespace=ns, namespaces=[ns]
    )
    second = Operator(
        controlplane.kubeconfig, tmp_path / "second.log", lease_namespace=ns, namespaces=[ns]
    )
    operator.stop()
    try:
        first.start()
        eventually(lambda: "leading as" in first.output(), what="the first replica to lead")
        second.start()
        yield first, second
    finally:
        for replica in (first, second):
            if replica.proc is not None and replica.proc.poll() is None:
                os.kill(replica.proc.pid, signal.SIGCONT)
            replica.stop()
        operator.start()


def test_standby_is_healthy_and_takes_over_at_once_when_the_leader_stops(
    controlplane: Any, ns: str, pair: tuple[Operator, Operator]
) -> None:
    first, second = pair
    controlplane.kubectl("apply", "-f", "-", input=SERVER.format(ns=ns, size="10MB"))
    eventually(lambda: _size(controlplane, ns) == 10 * 1024 * 1024, what="first replica's config")
    eventually(lambda: second.http("/readyz")[0] == 200, what="standby ready")
    assert second.http("/healthz")[0] == 200
    assert "smtpgate_operator_leader 0.0" in second.http("/metrics")[1]
    assert "leading as" not in second.output()
    assert first.proc is not None
    started = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(10)
    stopped = time.monotonic() - started
    assert stopped < 5, f"SIGTERM took {stopped:.1f}s"
    assert "released lease" in first.output()
    eventually(lambda: "leading as" in second.output(), timeout=10, what="takeover")
    took_over = time.monotonic() - started
    assert took_over < 6, f"takeover took {took_over:.1f}s"
    assert _holder(controlplane, ns) == second.user_agent.split("/", 1)[1]
    controlplane.kubectl("apply", "-f", "-", input=SERVER.format(ns=ns, size="20MB"))
    eventually(lambda: _size(controlplane, ns) == 20 * 1024 * 1024, what="the new leader at work")


def test_a_deposed_leader_stops_writing(
    controlplane: Any, ns: str, pair: tuple[Operator, Operator]
) -> None:
    first, second = pair
    controlplane.kubectl("apply", "-f", "-", input=SERVER.format(ns=ns, size="10MB"))
    eventually(lambda: _size(controlplane, ns) == 10 * 1024 * 1024, what="converged")
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
        eventually(
            lambda: "leading as" in second.output(), timeout=40, what="the standby to take over"
        )
        controlplane.kubectl("apply", "-f", "-", input=SERVER.format(ns=ns, size="20MB"))
        eventually(
            lambda: _size(controlplane, ns) == 20 * 1024 * 1024, what="the new leader's write"
        )
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    resumed = _stamp()
    for size in ("30MB", "40MB"):  # work for both, with events waiting in the old one's watches
        controlplane.kubectl("apply", "-f", "-", input=SERVER.format(ns=ns, size=size))
        time.sleep(3)
    eventually(lambda: _size(controlplane, ns) == 40 * 1024 * 1024, what="the edits applied")
    time.sleep(5)
    events = controlplane.plane.audit_events()
    stale = writes_by(events, first.user_agent, resumed)
    assert stale == [], [(e["verb"], e["objectRef"]) for e in stale][:10]
    assert writes_by(events, second.user_agent, resumed), "the new leader did the work"
    assert first.proc.poll() is None, "the deposed replica stays, as a standby"
    assert "no longer leading" in first.output()
    assert _holder(controlplane, ns) == second.user_agent.split("/", 1)[1]


def test_operator_outlives_a_minute_without_the_api_server(
    controlplane: Any, operator: Any, ns: str
) -> None:
    controlplane.kubectl("apply", "-f", "-", input=SERVER.format(ns=ns, size="10MB"))
    eventually(lambda: _size(controlplane, ns) == 10 * 1024 * 1024, what="converged")
    health: list[int] = []
    assert operator.proc is not None
    started = time.monotonic()
    down = 60.0

    # kill -9, 60 s down, started again with the same flags and etcd data
    restart = threading.Thread(target=controlplane.plane.restart, args=("kube-apiserver", down))
    restart.start()
    while restart.is_alive():
        health.append(operator.http("/healthz")[0])
        time.sleep(2)
    restart.join()
    assert time.monotonic() - started >= down
    assert operator.proc.poll() is None, "the operator is still running"
    assert health and all(code == 200 for code in health), health
    controlplane.kubectl("apply", "-f", "-", input=SERVER.format(ns=ns, size="20MB"))
    eventually(
        lambda: _size(controlplane, ns) == 20 * 1024 * 1024,
        timeout=60,
        what="an edit after the API server came back",
    )
    eventually(
        lambda: condition(get(controlplane, "rcvc", "partner", ns), "Ready")["status"] == "True",
        what="statuses again",
    )
