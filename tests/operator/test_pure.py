"""The operator's pure parts: what to write, when Ready, and the work queue's promises."""

from __future__ import annotations

import threading
import time

import pytest
from smtpgate.operator import leader, readiness, reconcile
from smtpgate.operator.workqueue import Key, WorkQueue


def test_contains_ignores_what_the_api_server_adds_but_not_what_differs() -> None:
    desired = {"spec": {"ports": [{"port": 25, "protocol": "TCP"}], "type": "LoadBalancer"}}
    actual = {
        "spec": {
            "ports": [{"port": 25, "protocol": "TCP", "nodePort": 31000}],
            "type": "LoadBalancer",
            "clusterIP": "10.0.0.9",
        },
        "status": {},
    }
    assert reconcile.contains(actual, desired)
    assert not reconcile.contains(actual, {"spec": {"type": "NodePort"}})
    assert not reconcile.contains(actual, {"spec": {"ports": [{"port": 25}, {"port": 587}]}})
    assert not reconcile.contains({"spec": None}, desired)


def test_status_patch_only_when_something_changed_and_transition_times_kept() -> None:
    cond = {"type": "Ready", "status": "True", "reason": "Serving", "message": "m"}
    current = {
        "observedGeneration": 1,
        "defaultConnectorsCreated": True,
        "conditions": [{**cond, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }
    desired = {"observedGeneration": 1, "defaultConnectorsCreated": True, "conditions": [cond]}
    assert reconcile.merged_status(current, desired, "2026-06-01T00:00:00Z") is None
    moved = reconcile.merged_status(
        current, {**desired, "observedGeneration": 2}, "2026-06-01T00:00:00Z"
    )
    assert moved is not None
    assert moved["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = reconcile.merged_status(
        current,
        {**desired, "conditions": [{**cond, "status": "False", "reason": "ReplicasNotReady"}]},
        "2026-06-01T00:00:00Z",
    )
    assert flipped is not None
    assert flipped["conditions"][0]["lastTransitionTime"] == "2026-06-01T00:00:00Z"
    dropped = reconcile.merged_status(
        current, {"observedGeneration": 1, "conditions": [cond]}, "2026-06-01T00:00:00Z"
    )
    assert dropped is not None and dropped["defaultConnectorsCreated"] is None


def test_events_for_changes_and_first_failures_only() -> None:
    def c(kind: str, status: str, reason: str) -> dict[str, str]:
        return {"type": kind, "status": status, "reason": reason}

    first = {
        "conditions": [
            c("Accepted", "True", "Valid"),
            c("CertificateReady", "False", "NoCertificates"),
            c("Ready", "False", "ServerNotReady"),
        ]
    }
    assert [x["type"] for x in reconcile.transitions(None, first)] == ["CertificateReady"]
    later = {"conditions": [c("Accepted", "True", "Valid"), c("Ready", "True", "Serving")]}
    assert [x["reason"] for x in reconcile.transitions(first, later)] == ["Serving"]
    assert reconcile.transitions(later, later) == []


def test_serving_needs_every_replica_ready_for_the_current_generation() -> None:
    def workload(generation: int, observed: int, ready: int, replicas: int = 2) -> dict:
        return {
            "metadata": {"generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "readyReplicas": ready},
        }

    assert readiness.serving(None, [], 2, "StatefulSet", "x")[:2] == (False, "WorkloadPending")
    assert readiness.serving(workload(2, 1, 2), [], 2, "StatefulSet", "x")[1] == "Progressing"
    assert readiness.serving(workload(2, 2, 2, replicas=1), [], 2, "StatefulSet", "x")[1] == (
        "Progressing"
    )
    crash = {
        "metadata": {"name": "x-0"},
        "status": {
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {"ready": False, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ],
        },
    }
    ok, reason, message = readiness.serving(workload(2, 2, 1), [crash], 2, "StatefulSet", "x")
    assert not ok and reason == "ReplicasNotReady" and "x-0: CrashLoopBackOff" in message
    assert readiness.serving(workload(2, 2, 2), [], 2, "StatefulSet", "x")[0] is True
    assert readiness.serving(workload(2, 2, 0), [], 0, "StatefulSet", "x")[1] == "NoReplicas"


def test_pod_problems_name_unschedulable_and_unready_pods() -> None:
    pending = {
        "metadata": {"name": "a"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available",
                }
            ]
        },
    }
    probe = {
        "metadata": {"name": "b"},
        "status": {"containerStatuses": [{"started": True, "ready": False, "state": {}}]},
    }
    assert readiness.pod_problems([probe, pending]) == [
        "a: Unschedulable: 0/1 nodes are available",
        "b: running, readiness probe failing",
    ]


def test_queue_coalesces_a_burst_into_one_run() -> None:
    queue = WorkQueue(quiet=0.05, max_delay=1)
    for _ in range(100):
        queue.add(Key("ns", "ex01"))
    assert queue.depth() == 1
    assert queue.get(timeout=1) == Key("ns", "ex01")
    assert queue.get(timeout=0.2) is None


def test_queue_delays_a_busy_key_no_longer_than_max_delay() -> None:
    queue = WorkQueue(quiet=0.2, max_delay=0.5)
    started = time.monotonic()
    stop = threading.Event()

    def keep_adding() -> None:
        while not stop.is_set():
            queue.add(Key("ns", "busy"))
            time.sleep(0.05)

    adder = threading.Thread(target=keep_adding)
    adder.start()
    try:
        assert queue.get(timeout=3) == Key("ns", "busy")
    finally:
        stop.set()
        adder.join()
    assert 0.45 < time.monotonic() - started < 1.0


def test_queue_runs_a_key_once_at_a_time_and_again_after() -> None:
    queue = WorkQueue(quiet=0)
    key = Key("ns", "ex01")
    queue.add(key)
    assert queue.get(timeout=1) == key
    queue.add(key)  # an event while it runs
    assert queue.get(timeout=0.1) is None, "never twice at once"
    queue.done(key)
    assert queue.get(timeout=1) == key


def test_queue_lets_namespaces_take_turns() -> None:
    queue = WorkQueue(quiet=0)
    for i in range(50):
        queue.add(Key("busy", f"s{i}"))
    queue.add(Key("quiet", "lonely"))
    time.sleep(0.01)
    order = [queue.get(timeout=1) for _ in range(3)]
    assert Key("quiet", "lonely") in order


def test_queue_retry_delay_is_kept() -> None:
    queue = WorkQueue(quiet=0)
    queue.add(Key("ns", "x"), delay=0.3)
    assert queue.get(timeout=0.1) is None
    assert queue.get(timeout=1) == Key("ns", "x")


def test_lease_timing_must_leave_room_to_stop_writing() -> None:
    with pytest.raises(ValueError):
        leader.Timing(lease_seconds=10, renew_deadline_seconds=10)
    with pytest.raises(ValueError):
        leader.Timing(retry_seconds=10, renew_deadline_seconds=5, lease_seconds=15)
    assert leader.Timing().renew_deadline_seconds < leader.Timing().lease_seconds


def test_the_documented_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: 4 workers, every server again every 10 minutes, a key waits 0.3 s after its
    last event and 3 s at most; a 15 s Lease, 10 s renew deadline, 2 s between tries."""
    from smtpgate.operator import __main__ as main

    monkeypatch.delenv("SMTPGATE_RESYNC_SECONDS", raising=False)
    args = main.parse_args([])
    assert (args.workers, args.resync_seconds) == (4, 600)
    queue = WorkQueue()
    assert (queue.quiet, queue.max_delay) == (0.3, 3.0)
    assert leader.Timing() == leader.Timing(15, 10, 2)
