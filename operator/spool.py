"""The spools of a server's receiver pods: each pod's ``/spool`` read over the pod network
(``probe``, the I/O), the ``SpoolHealthy`` condition made of what they said, and the
refusal that turns the server's and its connectors' ``Ready`` False (``condition`` and
``refusal``, pure).

A receiver whose spool volume is nearly full answers new MAIL ``452 4.3.1``, and one whose
spool cannot be written ``451 4.3.0``: it is up and talks SMTP, but takes no mail, so the
server is not Ready ("Ready means serving"). The pod itself stays ready and in its
Services: the 452 tells clients to keep their mail and try again, as Postfix's
``queue_minfree`` and Exchange's back pressure do (README, "Back pressure")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smtpgate.connectors.enums import SpoolState

from . import queues

Body = dict[str, Any]
# Why new MAIL is refused (what the receiver's /spool says).
FULL, UNWRITABLE = SpoolState.Full.value, SpoolState.Unwritable.value
REASONS = (FULL, UNWRITABLE)


@dataclass(frozen=True)
class Report:
    """What one pod's receiver saw of its spool at its last look, or why it could not be
    read."""

    pod: str
    refusing: bool = False
    reason: str = ""
    reply: str | None = None
    problem: str | None = None
    free_bytes: int | None = None
    size_bytes: int | None = None
    free_percent: float | None = None
    free_inodes_percent: float | None = None
    min_free_bytes: int = 0
    min_free_percent: int = 0
    error: str | None = None


def probe(pod: Body, timeout: float = queues.TIMEOUT) -> Report | None:
    """The pod's spool, or None for a pod that is not ready (it answers no probe)."""
    name = pod["metadata"]["name"]
    data = queues.fetch(pod, "/spool", timeout)
    if data is None:
        return None
    if isinstance(data, str):
        return Report(name, error=data)
    try:
        return Report(
            name,
            refusing=bool(data.get("refusing")),
            reason=str(data.get("reason") or ""),
            reply=_text(data.get("reply")),
            problem=_text(data.get("problem")),
            free_bytes=_number(data.get("freeBytes"), int),
            size_bytes=_number(data.get("sizeBytes"), int),
            free_percent=_number(data.get("freePercent"), float),
            free_inodes_percent=_number(data.get("freeInodesPercent"), float),
            min_free_bytes=int(data.get("minFreeBytes") or 0),
            min_free_percent=int(data.get("minFreePercent") or 0),
        )
    except (TypeError, ValueError) as err:
        return Report(name, error=f"/spool unreadable: {err}")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:200]


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    return None if value is None else kind(value)


def size(count: int | None) -> str:
    """Bytes the way Kubernetes quantities write them: 812Ki, 3.9Gi."""
    if count is None:
        return "?"
    value, unit = float(count), ""
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            break
        value /= 1024
    return f"{value:.0f}{unit}" if value >= 10 or not unit else f"{value:.1f}{unit}"


def describe(report: Report) -> str:
    """One pod's spool in words: what it has free against the minimum it enforces, and the
    answer new MAIL gets while it refuses."""
    if report.reason == UNWRITABLE:
        text = f"{report.pod}: {report.problem or 'the spool cannot be written'}"
    else:
        text = f"{report.pod}: {size(report.free_bytes)} free of {size(report.size_bytes)}"
        if report.free_percent is not None:
            text += f" ({report.free_percent:g}%"
            if report.free_inodes_percent is not None:
                text += f", inodes {report.free_inodes_percent:g}%"
            text += ")"
        text += (
            f", minimum minFreeBytes {size(report.min_free_bytes)}"
            f" and minFreePercent {report.min_free_percent}%"
        )
    if report.refusing and report.reply:
        text += "; new MAIL gets " + " ".join(report.reply.split()[:2])
    return text


def refusal(reports: list[Report]) -> tuple[str, str] | None:
    """(reason, message) for Ready while some pod refuses new MAIL for its spool's sake:
    ``SpoolUnwritable`` when one cannot write it at all, else ``SpoolFull``; None while
    every pod read takes mail."""
    refusing = sorted((r for r in reports if r.error is None and r.refusing), key=_pod)
    if not refusing:
        return None
    reason = UNWRITABLE if any(r.reason == UNWRITABLE for r in refusing) else FULL
    why = "for lack of spool space" if reason == FULL else "because the spool cannot be written"
    read = sum(1 for r in reports if r.error is None)
    message = f"{len(refusing)} of {read} pods refuse new mail {why}: " + "; ".join(
        describe(r) for r in refusing
    )
    return reason, message[:1000]


def condition(reports: list[Report], generation: int | None) -> Body:
    """SpoolHealthy: False while some pod refuses new MAIL for its spool's sake (the
    reason ``refusal`` gives), Unknown while no pod could be read, else True."""

    def current(read: list[Report]) -> tuple[str, str]:
        least = min(read, key=lambda r: (r.free_bytes is None, r.free_bytes or 0))
        return "SpoolHasRoom", f"{len(read)} pods take new mail; the least room: {describe(least)}"

    return queues.pods_condition("SpoolHealthy", reports, refusal(reports), current, generation)


def _pod(report: Report) -> str:
    return report.pod
