"""The queue's decisions, pure: what an answer means for a recipient, when the next try
is due, when a message has expired, and whether its sender is told."""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    REFUSED = "refused"  # permanently: the sender gets a notice
    DEFERRED = "deferred"  # try again later


def outcome(code: int) -> Outcome:
    """A next hop's reply code for one recipient (RFC 5321 4.2.1)."""
    if 200 <= code < 300:
        return Outcome.DELIVERED
    if 500 <= code < 600:
        return Outcome.REFUSED
    return Outcome.DEFERRED  # 4xx, and anything unexpected: keep the message


def backoff(age: float, retry_seconds: float, max_retry_seconds: float) -> float:
    """Seconds to the next try of a message queued ``age`` seconds ago: as long as it has
    waited so far, at least ``retry_seconds`` and at most ``max_retry_seconds`` (each wait
    about doubles, as Postfix's queue manager does)."""
    return min(max_retry_seconds, max(retry_seconds, age))


def expired(age: float, expiration_seconds: float) -> bool:
    return age >= expiration_seconds


def notify_failure(sender: str, notify: str | None) -> bool:
    """Whether a failure is reported to ``sender``: never to the null sender (a notice
    about a notice would loop), and not where the client asked for NOTIFY=NEVER or for
    notices other than FAILURE (RFC 3461 4.1)."""
    if sender in ("", "<>"):
        return False
    if notify is None:
        return True
    return "FAILURE" in {item.strip().upper() for item in notify.split(",")}
