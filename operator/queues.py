"""The StoreAndForward queues of a server's receiver pods: each pod's ``/queue`` read over
the pod network (``probe``, the I/O), and the ``QueueHealthy`` condition made of what they
said (``condition``, pure).

The receiver has no API credentials and writes nothing to the API server; the operator
already reaches every pod (it runs in the cluster), so it asks each ready pod on its
``health`` port, with a short timeout, when it reconciles the server, and looks again every
``RECHECK_SECONDS`` while the server is in StoreAndForward mode."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import resources

Body = dict[str, Any]
RECHECK_SECONDS = 30.0
TIMEOUT = 2.0


@dataclass(frozen=True)
class Report:
    """What one pod's queue held at its last scan, or why it could not be read."""

    pod: str
    messages: int = 0
    oldest_seconds: float = 0.0
    error: str | None = None


def _health_port(pod: Body) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "health":
                return int(port["containerPort"])
    return resources.HEALTH_PORT


def _ready(pod: Body) -> bool:
    status = pod.get("status") or {}
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def fetch(pod: Body, path: str, timeout: float = TIMEOUT) -> Body | str | None:
    """GET ``path`` on the pod's health port: its JSON object, what went wrong (a string),
    or None for a pod that is not ready (it answers no probe). Shared with ``spool``."""
    address = (pod.get("status") or {}).get("podIP")
    if not address or not _ready(pod) or pod["metadata"].get("deletionTimestamp"):
        return None
    connection = http.client.HTTPConnection(address, _health_port(pod), timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read(4096)
        if response.status != 200:
            return f"{path} answered {response.status}"
        data = json.loads(body)
        if not isinstance(data, dict):
            return f"{path} unreadable: not a JSON object"
        return data
    except (OSError, http.client.HTTPException, ValueError) as err:
        return f"{path} unreadable: {err}"
    finally:
        connection.close()


def probe(pod: Body, timeout: float = TIMEOUT) -> Report | None:
    """The pod's queue, or None for a pod that is not ready (it answers no probe)."""
    name = pod["metadata"]["name"]
    data = fetch(pod, "/queue", timeout)
    if data is None:
        return None
    if isinstance(data, str):
        return Report(name, error=data)
    try:
        return Report(name, int(data.get("messages", 0)), float(data.get("oldestSeconds", 0)))
    except (TypeError, ValueError) as err:
        return Report(name, error=f"/queue unreadable: {err}")


def condition(reports: list[Report], threshold: int, generation: int | None) -> Body:
    """QueueHealthy: False while some pod's oldest message is older than ``threshold``
    seconds, Unknown while no pod could be read, else True."""
    late = [r for r in reports if r.error is None and r.oldest_seconds > threshold]
    trouble = None
    if late:
        trouble = (
            "QueueBacklog",
            "; ".join(
                f"{r.pod}: {r.messages} messages, the oldest {r.oldest_seconds:.0f}s old"
                for r in sorted(late, key=_pod)
            )
            + f" (ageWarningSeconds {threshold})",
        )

    def current(read: list[Any]) -> tuple[str, str]:
        queued = sum(r.messages for r in read)
        text = f"{queued} messages queued in {len(read)} pods, none older than {threshold}s"
        return "QueueCurrent", text

    return pods_condition("QueueHealthy", reports, trouble, current, generation)


def pods_condition(
    kind: str,
    reports: list[Any],
    trouble: tuple[str, str] | None,
    current: Callable[[list[Any]], tuple[str, str]],
    generation: int | None,
) -> Body:
    """A condition on what every ready pod reported (each report has ``pod`` and ``error``):
    False with ``trouble`` (reason, message) while there is some; Unknown
    (``<Kind>Unknown``) while no pod could be read; else True with what ``current`` says of
    the pods read, naming those that could not be."""
    read = [r for r in reports if r.error is None]
    if trouble is not None:
        status, (reason, message) = "False", trouble
    elif not read:
        status, reason = "Unknown", kind.removesuffix("Healthy") + "Unknown"
        message = "; ".join(f"{r.pod}: {r.error}" for r in reports) or "no ready pod to ask"
    else:
        status, (reason, message) = "True", current(read)
        unread = [r for r in reports if r.error is not None]
        if unread:
            message += "; unread: " + ", ".join(sorted(r.pod for r in unread))
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:1000],
        "observedGeneration": generation,
    }


def _pod(report: Any) -> str:
    return str(report.pod)
