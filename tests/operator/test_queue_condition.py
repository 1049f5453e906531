"""The QueueHealthy condition of a StoreAndForward server: the operator asks each ready
receiver pod's /queue (over the pod network; here a real receiver process on loopback,
standing for a pod whose status says 127.0.0.1) and says when a queue is older than
ageWarningSeconds, and when it is current again."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import smtplib
import subprocess
import sys
import time
from typing import Any

import pytest
from smtpgate.operator import queues

from ..kube_helpers import apply, condition, create_pod, eventually, get
from ..receiver.conftest import free_port
from ..receiver.test_queue import queue_config

SERVER = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec:
  fqdn: mail.contoso.com
  createDefaultConnectors: false
  nextHop:
    type: Smtp
    host: 127.0.0.1
    port: {hop}
    mode: StoreAndForward
    queue: {{ageWarningSeconds: 600}}
"""

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "ex01-receiver-0",
        "labels": {
            "app.kubernetes.io/instance": "ex01",
            "app.kubernetes.io/managed-by": "smtpgate-operator",
        },
    },
    "spec": {"containers": [{"name": "receiver", "image": "smtpgate/receiver:test"}]},
}


@pytest.mark.skipif(shutil.which("smtp-sink") is None, reason="needs Postfix's smtp-sink")
def test_queue_healthy_turns_false_while_a_pods_queue_is_old_and_true_once_it_drains(
    controlplane: Any, operator: Any, ns: str, tmp_path: pathlib.Path
) -> None:
    hop, port, health = free_port(), free_port(), free_port()
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtpgate.receiver",
            "--config",
            str(queue_config(tmp_path, hop)),
            "--spool",
            str(tmp_path / "spool"),
            "--listen-v4",
            "127.0.0.1",
            "--port-map",
            f"25={port}",
            "--health-host",
            "127.0.0.1",
            "--health-port",
            str(health),
            "--protocol-log",
            os.devnull,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    sink = None
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == b"ready"
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("s@example.org", ["u@contoso.com"], b"Subject: old\r\n\r\nx\r\n")
        (queued,) = (tmp_path / "spool" / "new").iterdir()
        an_hour_ago = time.time() - 3600
        os.utime(queued, (an_hour_ago, an_hour_ago))  # queued an hour ago, next hop away

        apply(controlplane, SERVER.format(ns=ns, hop=hop))
        pod = json.loads(json.dumps(POD))
        pod["metadata"]["namespace"] = ns
        pod["spec"]["containers"][0]["ports"] = [{"name": "health", "containerPort": health}]
        create_pod(controlplane, pod)
        status = {
            "status": {
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        }
        controlplane.kubectl(
            "patch",
            "pod",
            "ex01-receiver-0",
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )

        def backlog() -> dict[str, Any]:
            found = condition(get(controlplane, "tsrv", "ex01", ns), "QueueHealthy")
            assert found["status"] == "False", found
            return found

        found = eventually(backlog, timeout=60, what="QueueHealthy False")
        assert found["reason"] == "QueueBacklog"
        assert found["message"].startswith("ex01-receiver-0: 1 messages, the oldest 36")
        assert "(ageWarningSeconds 600)" in found["message"]

        sink = subprocess.Popen(  # the next hop is back: the queue drains
            ["smtp-sink", "-u", "postfix", f"127.0.0.1:{hop}", "16"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def current() -> dict[str, Any]:
            found = condition(get(controlplane, "tsrv", "ex01", ns), "QueueHealthy")
            assert found["status"] == "True", found
            return found

        found = eventually(current, timeout=90, what="QueueHealthy True")
        assert found["reason"] == "QueueCurrent"
        assert found["message"].startswith("0 messages queued in 1 pods")
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        receiver.terminate()
        receiver.wait(30)
        if receiver.stdout is not None:
            receiver.stdout.close()


@pytest.mark.parametrize(
    ("reports", "status", "reason"),
    [
        ([], "Unknown", "QueueUnknown"),
        ([queues.Report("p0", error="/queue unreadable: refused")], "Unknown", "QueueUnknown"),
        ([queues.Report("p0", 3, 10.0)], "True", "QueueCurrent"),
        ([queues.Report("p0", 3, 10.0), queues.Report("p1", error="x")], "True", "QueueCurrent"),
        ([queues.Report("p0", 3, 10.0), queues.Report("p1", 9, 601.0)], "False", "QueueBacklog"),
    ],
)
def test_queue_healthy_is_false_when_any_pods_oldest_message_is_past_the_threshold(
    reports: list[queues.Report], status: str, reason: str
) -> None:
    found = queues.condition(reports, 600, 4)
    assert (found["status"], found["reason"], found["observedGeneration"]) == (status, reason, 4)
