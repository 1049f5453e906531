"""The SpoolHealthy condition, and Ready False while a pod refuses mail for its spool's sake:
the operator asks each ready receiver pod's /spool (over the pod network; here a real
receiver process on loopback whose spool is a 4 MiB tmpfs, standing for a pod whose status
says 127.0.0.1, as in test_queue_condition) and says, on the TransportServer and its
connectors, when new MAIL gets 452 for lack of space and when it is taken again."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from smtpgate.operator import spool
from smtpgate.receiver.backpressure import SPOOL_FULL

from ..kube_helpers import apply, condition, create_pod, eventually, get
from ..receiver import test_spool_health as volume_helpers
from ..receiver.helpers import expected
from ..receiver.test_spool_health import MIB, fill, mail, receiver, send, small_volume, stop
from .test_queue_condition import POD

SERVER = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec:
  fqdn: mail.contoso.com
  createDefaultConnectors: false
  nextHop:
    type: Maildir
    storage: {{minFreeBytes: 1Mi, minFreePercent: 10}}
---
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: internet, namespace: {ns}}}
spec:
  server: ex01
  usage: Internet
  bindings: ["0.0.0.0:25"]
"""


def _stand_in_pod(controlplane: Any, ns: str, health: int) -> None:
    """The pod object of replica 0, ready at 127.0.0.1 with the receiver's health port."""
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
        "patch", "pod", "ex01-receiver-0", "-n", ns, "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip


def _conditions(controlplane: Any, ns: str) -> tuple[Any, Any, Any]:
    server = get(controlplane, "tsrv", "ex01", ns)
    connector = get(controlplane, "rcvc", "internet", ns)
    return (
        condition(server, "SpoolHealthy"),
        condition(server, "Ready"),
        condition(connector, "Ready"),
    )


@pytest.mark.skipif(
    volume_helpers.mount_reason() is not None, reason=str(volume_helpers.mount_reason())
)
def test_ready_turns_false_while_a_pods_spool_is_full_and_true_once_space_is_freed(
    controlplane: Any, operator: Any, ns: str, tmp_path: pathlib.Path
) -> None:
    with small_volume(tmp_path / "volume") as vol:
        cfg = volume_helpers.spool_config(tmp_path, min_free_bytes=MIB, min_free_percent=10)
        proc, port, health = receiver(tmp_path, vol / "spool", cfg)
        try:
            apply(controlplane, SERVER.format(ns=ns))
            _stand_in_pod(controlplane, ns, health)

            def serving() -> bool:
                spool_ok, ready, connector = _conditions(controlplane, ns)
                assert (spool_ok["status"], spool_ok["reason"]) == ("True", "SpoolHasRoom")
                assert (ready["status"], ready["reason"]) == ("True", "Serving"), ready
                assert (connector["status"], connector["reason"]) == ("True", "Serving")
                return True

            eventually(serving, timeout=60, what="SpoolHealthy and Ready True")
            spool_ok, _, _ = _conditions(controlplane, ns)
            assert spool_ok["message"].startswith("1 pods take new mail; the least room: ")
            assert send(port)

            ballast = fill(vol, leave=MIB // 2)
            assert eventually(lambda: mail(port) == expected(SPOOL_FULL))

            def refusing() -> tuple[Any, Any, Any]:
                found = _conditions(controlplane, ns)
                assert [c["status"] for c in found] == ["False"] * 3, found
                return found

            spool_ok, ready, connector = eventually(refusing, timeout=60, what="Ready False")
            assert [c["reason"] for c in (spool_ok, ready, connector)] == ["SpoolFull"] * 3
            message = spool_ok["message"]
            assert message.startswith(
                "1 of 1 pods refuse new mail for lack of spool space: ex01-receiver-0: "
            ), message
            assert "free of 4.0Mi" in message
            assert "minimum minFreeBytes 1.0Mi and minFreePercent 10%" in message
            assert message.endswith("; new MAIL gets 452 4.3.1")
            assert ready["message"].endswith(message)
            assert connector["message"] == "in ConfigMap ex01-receiver; " + message

            ballast.unlink()  # space freed
            eventually(serving, timeout=60, what="SpoolHealthy and Ready True again")
            assert send(port)
        finally:
            stop(proc)


GOOD = spool.Report("p0", reason="SpoolHasRoom", free_bytes=50 * MIB, size_bytes=100 * MIB)
FULL = spool.Report("p1", True, "SpoolFull", "452 4.3.1 Insufficient", free_bytes=MIB)
GONE = spool.Report("p2", True, "SpoolUnwritable", "451 4.3.0 Local", "the spool is missing")
UNREAD = spool.Report("p3", error="/spool answered 404")


@pytest.mark.parametrize(
    ("reports", "status", "reason", "ready"),
    [
        ([], "Unknown", "SpoolUnknown", None),
        ([UNREAD], "Unknown", "SpoolUnknown", None),  # a receiver without /spool: no verdict
        ([GOOD, UNREAD], "True", "SpoolHasRoom", None),
        ([GOOD, FULL], "False", "SpoolFull", "SpoolFull"),  # one pod of two refusing is enough
        ([FULL, GONE], "False", "SpoolUnwritable", "SpoolUnwritable"),
    ],
)
def test_spool_healthy_is_false_and_ready_refused_when_any_pod_refuses_mail_for_its_spool(
    reports: list[spool.Report], status: str, reason: str, ready: str | None
) -> None:
    found = spool.condition(reports, 4)
    assert (found["status"], found["reason"], found["observedGeneration"]) == (status, reason, 4)
    refused = spool.refusal(reports)
    assert (refused[0] if refused else None) == ready
