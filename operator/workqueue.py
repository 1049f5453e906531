"""A coalescing, fair work queue of reconcile keys.

A key waits at most once: adding a key that is already waiting only moves it later (a short
quiet period lets a burst of events about one server become one reconcile), never past its
first add plus ``max_delay``. A key being worked on that is added again runs once more when
the worker is done, never twice at once. Namespaces take turns, so that a burst in one
namespace cannot starve another."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import OrderedDict, deque
from typing import NamedTuple

from . import metrics


class Key(NamedTuple):
    """One server of a namespace, or (with ``server`` None) the namespace-wide statuses."""

    namespace: str
    server: str | None


class WorkQueue:
    def __init__(self, quiet: float = 0.3, max_delay: float = 3.0) -> None:
        self.quiet, self.max_delay = quiet, max_delay
        self._cond = threading.Condition()
        self._ready: dict[str, OrderedDict[Key, None]] = {}
        self._turns: deque[str] = deque()
        self._waiting: dict[Key, tuple[float, float]] = {}  # key -> (due, first added)
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._active: set[Key] = set()
        self._again: dict[Key, float] = {}
        self._closed = False

    # -- adding ---------------------------------------------------------------------------
    def add(self, key: Key, delay: float | None = None) -> None:
        """Run ``key`` after the quiet period (or ``delay`` seconds)."""
        now = time.monotonic()
        wait = self.quiet if delay is None else delay
        with self._cond:
            if key in self._active:
                self._again[key] = min(self._again.get(key, wait), wait)
                return
            if self._is_ready(key):
                return
            due, first = now + wait, now
            if key in self._waiting:
                old_due, first = self._waiting[key]
                if delay is None:  # an event: move later, but not past first + max_delay
                    due = min(max(old_due, due), first + self.max_delay)
                else:  # a retry or resync: the sooner wins
                    due = min(old_due, due)
                if due == old_due:
                    return
            self._waiting[key] = (due, first)
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cond.notify()
            self._publish()

    def _is_ready(self, key: Key) -> bool:
        return key in self._ready.get(key.namespace, ())

    def _promote(self, now: float) -> float | None:
        """Move due keys to their namespace's line; returns when the next one falls due."""
        while self._heap:
            due, _, key = self._heap[0]
            current = self._waiting.get(key)
            if current is None or current[0] != due:
                heapq.heappop(self._heap)  # superseded entry
                continue
            if due > now:
                return due
            heapq.heappop(self._heap)
            del self._waiting[key]
            line = self._ready.setdefault(key.namespace, OrderedDict())
            if not line:
                self._turns.append(key.namespace)
            line[key] = None
        return None

    # -- taking ---------------------------------------------------------------------------
    def get(self, timeout: float = 1.0) -> Key | None:
        """The next key, namespaces in turn; None after ``timeout`` or when closed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                next_due = self._promote(now)
                if self._turns:
                    namespace = self._turns.popleft()
                    line = self._ready[namespace]
                    key, _ = line.popitem(last=False)
                    if line:
                        self._turns.append(namespace)
                    else:
                        del self._ready[namespace]
                    self._active.add(key)
                    self._publish()
                    return key
                wait = deadline - now
                if next_due is not None:
                    wait = min(wait, next_due - now)
                if wait <= 0:
                    return None
                self._cond.wait(wait)
            return None

    def done(self, key: Key) -> None:
        with self._cond:
            self._active.discard(key)
            again = self._again.pop(key, None)
        if again is not None:
            self.add(key, delay=again)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def depth(self) -> int:
        with self._cond:
            return len(self._waiting) + sum(len(line) for line in self._ready.values())

    def _publish(self) -> None:
        metrics.QUEUE_DEPTH.set(len(self._waiting) + sum(len(v) for v in self._ready.values()))
