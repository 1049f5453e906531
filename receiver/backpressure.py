"""Back pressure on the spool: while its volume is nearly full, new MAIL gets
``452 4.3.1`` (RFC 3463: mail system full) and the client's queue keeps the message, before
a full disk turns every DATA into 451 after the client has sent it all.

The volume is looked at with ``statvfs`` at most once a ``period`` (a system call of a
few microseconds), free space and free inodes both; the decision itself is pure
(``decide``)."""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from dataclasses import dataclass

from smtpgate.connectors.specs import SpoolStorage

from .replies import Reply

log = logging.getLogger(__name__)

SPOOL_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")


@dataclass(frozen=True)
class Usage:
    """What statvfs says of a volume."""

    size: int
    free: int
    inodes: int
    free_inodes: int


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
    )


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
        self._answer: Reply | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_storage(cls, root: str | pathlib.Path, storage: SpoolStorage) -> SpoolGuard:
        return cls(root, storage.min_free_percent, storage.min_free_bytes)

    def admit(self) -> Reply | None:
        now = time.monotonic()
        if now - self._checked < self.period:
            return self._answer
        with self._lock:
            if now - self._checked >= self.period:
                try:
                    answer = decide(usage(self.root), self.min_free_percent, self.min_free_bytes)
                except OSError as err:
                    log.warning("cannot look at the spool volume %s: %s", self.root, err)
                    answer = None  # the commit will say whether it can write
                if answer is not None and self._answer is None:
                    log.warning("spool volume %s nearly full: new mail gets 452", self.root)
                elif answer is None and self._answer is not None:
                    log.info("spool volume %s has room again", self.root)
                self._answer, self._checked = answer, now
        return self._answer
