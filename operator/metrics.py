"""The operator's Prometheus metrics, served on /metrics beside /healthz and /readyz."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "smtpgate_operator_reconciles_total",
    "Reconciles by scope (server or namespace) and result (ok, error, skipped).",
    ["scope", "result"],
)
RECONCILE_SECONDS = Histogram(
    "smtpgate_operator_reconcile_duration_seconds",
    "How long one reconcile took, reads from the cache and writes included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WRITES = Counter(
    "smtpgate_operator_writes_total",
    "Writes the operator made, by kind and what (apply, create, delete, status, event).",
    ["kind", "what"],
)
API_REQUESTS = Counter(
    "smtpgate_operator_api_requests_total",
    "Requests to the Kubernetes API by verb and HTTP status (0: unreachable).",
    ["verb", "code"],
)
QUEUE_DEPTH = Gauge(
    "smtpgate_operator_queue_depth", "Reconciles waiting (each server or namespace once)."
)
LEADER = Gauge("smtpgate_operator_leader", "1 while this replica holds the Lease and may write.")
WATCHED_OBJECTS = Gauge(
    "smtpgate_operator_watched_objects", "Objects in the operator's cache, by kind.", ["kind"]
)
WATCH_RESTARTS = Counter(
    "smtpgate_operator_watch_restarts_total",
    "Watches that ended with an error and were started again, by kind.",
    ["kind"],
)
