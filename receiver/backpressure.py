"""Back pressure on the spool: while its volume is nearly full, new MAIL gets
``452 4.3.1`` (RFC 3463: mail system full) and the client's queue keeps the message, before
a full disk turns every DATA into 451 after the client has sent it all; while the spool
cannot be written at all (a read-only volume, its folders gone), ``451 4.3.0``.

The volume is looked at with ``statvfs`` and ``access`` at most once a ``period`` (system
calls of a few microseconds), free space and free inodes both; the decision itself is pure
(``decide``). What the guard saw last is ``SpoolGuard.report()``, the health port's
``/spool`` (the operator's SpoolHealthy condition)."""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from smtpgate.connectors.enums import SpoolState
from smtpgate.connectors.specs import SpoolStorage

from . import health
from .replies import Reply

log = logging.getLogger(__name__)

SPOOL_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
SPOOL_UNWRITABLE = Reply(451, "4.3.0", "Local error: the spool cannot be written, try again later")

# Why new MAIL is refused, as /spool and the operator's condition name it.
ROOM, FULL, UNWRITABLE = SpoolState.HasRoom, SpoolState.Full, SpoolState.Unwritable


@dataclass(frozen=True)
class Usage:
    """What statvfs says of a volume."""

    size: int
    free: int
    inodes: int
    free_inodes: int
    read_only: bool = False


@dataclass(frozen=True)
class State:
    """What the guard saw at one look: the answer new MAIL gets (None: it goes ahead), why
    (``ROOM``, ``FULL`` or ``UNWRITABLE``), the volume's usage where statvfs could say, and
    what could not be written."""

    answer: Reply | None
    reason: str
    usage: Usage | None = None
    problem: str | None = None
    at: float = 0.0  # time.time() of the look


def decide(usage: Usage, min_free_percent: int, min_free_bytes: int) -> Reply | None:
    """``SPOOL_FULL`` while less than ``min_free_bytes`` or ``min_free_percent`` of the
    space, or ``min_free_percent`` of the inodes, is free; None otherwise."""
    if min_free_bytes and usage.free < min_free_bytes:
        return SPOOL_FULL
    if min_free_percent:
        if usage.free * 100 < usage.size * min_free_percent:
            return SPOOL_FULL
        if usage.inodes and usage.free_inodes * 100 < usage.inodes * min_free_percent:
            return SPOOL_FULL
    return None


def usage(path: str | pathlib.Path) -> Usage:
    st = os.statvfs(path)
    return Usage(
        size=st.f_blocks * st.f_frsize,
        free=st.f_bavail * st.f_frsize,
        inodes=st.f_files,
        free_inodes=st.f_favail,
        read_only=bool(st.f_flag & os.ST_RDONLY),
    )


def unwritable(root: pathlib.Path, seen: Usage) -> str | None:
    """Why a message file could not be made in the maildir at ``root`` (the volume is
    read-only, tmp/ or new/ is gone or not writable to this process), or None."""
    if seen.read_only:
        return "the spool volume is mounted read-only"
    for sub in ("tmp", "new"):
        folder = root / sub
        if not folder.is_dir():
            return f"{sub}/ is missing from the spool"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{sub}/ of the spool is not writable"
    return None


def look(root: pathlib.Path, min_free_percent: int, min_free_bytes: int) -> State:
    """One look at the spool (I/O: statvfs and access)."""
    now = time.time()
    try:
        seen = usage(root)
    except OSError as err:
        why = "the spool folder is missing" if not root.exists() else f"statvfs: {err.strerror}"
        return State(SPOOL_UNWRITABLE, UNWRITABLE, None, why, now)
    problem = unwritable(root, seen)
    if problem is not None:
        return State(SPOOL_UNWRITABLE, UNWRITABLE, seen, problem, now)
    answer = decide(seen, min_free_percent, min_free_bytes)
    return State(answer, ROOM if answer is None else FULL, seen, None, now)


class SpoolGuard:
    """``admit`` for a spool folder, from a cached look at its volume."""

    def __init__(
        self,
        root: str | pathlib.Path,
        min_free_percent: int = 5,
        min_free_bytes: int = 64 << 20,
        period: float = 1.0,
    ) -> None:
        self.root = pathlib.Path(root)
        self.min_free_percent, self.min_free_bytes = min_free_percent, min_free_bytes
        self.period = period
        self._checked = -period
        self._state = State(None, "")  # not looked yet
        self._lock = threading.Lock()

    @classmethod
    def from_storage(cls, root: str | pathlib.Path, storage: SpoolStorage) -> SpoolGuard:
        return cls(root, storage.min_free_percent, storage.min_free_bytes)

    def admit(self) -> Reply | None:
        return self.state().answer

    def state(self) -> State:
        """The last look, taken again when it is older than ``period``."""
        now = time.monotonic()
        if now - self._checked < self.period:
            return self._state
        with self._lock:
            if now - self._checked >= self.period:
                state = look(self.root, self.min_free_percent, self.min_free_bytes)
                self._tell(self._state, state)
                self._state, self._checked = state, now
        return self._state

    def _tell(self, before: State, after: State) -> None:
        if before.reason == after.reason:
            return
        health.SPOOL_REFUSING.set(0 if after.answer is None else 1)
        if after.reason == ROOM and not before.reason:
            return
        if after.reason == FULL:
            log.warning("spool volume %s nearly full: new mail gets 452", self.root)
        elif after.reason == UNWRITABLE:
            log.warning(
                "spool %s cannot be written (%s): new mail gets 451", self.root, after.problem
            )
        else:
            log.info("spool volume %s has room again", self.root)

    def report(self) -> dict[str, Any]:
        """``/spool``: whether new MAIL is refused and why, what the volume had free and the
        minimums this receiver enforces (JSON names, for the operator)."""
        state = self.state()
        seen = state.usage
        return {
            "refusing": state.answer is not None,
            "reason": state.reason,
            "reply": state.answer.line() if state.answer is not None else None,
            "problem": state.problem,
            "sizeBytes": seen.size if seen else None,
            "freeBytes": seen.free if seen else None,
            "freePercent": round(seen.free * 100 / seen.size, 2) if seen and seen.size else None,
            "freeInodesPercent": (
                round(seen.free_inodes * 100 / seen.inodes, 2) if seen and seen.inodes else None
            ),
            "minFreeBytes": self.min_free_bytes,
            "minFreePercent": self.min_free_percent,
            "checkedAt": state.at,
        }
