"""Store and forward: 250 once a message is in the spool, then delivery from the spool
to the next hop (SMTP or LMTP, through ``relay``'s client), retried with backoff while the
next hop is away or answers 4xx, returned to the sender (``dsn``) when it answers 5xx or
the message expires. A message leaves the spool only once every recipient is settled:
delivered, or refused and its sender told.

Every worker process runs a ``QueueRunner`` on the same spool. A message is delivered by
the process that holds its ``flock`` (``spoolfile.Queued``); a process that dies drops its
locks, and the others (or its successor) pick its messages up at their next scan. Each
process learns of its own new messages at once (the spool's ``on_commit``), and of the
rest by scanning the spool every few seconds.

What a crash can do: a recipient the next hop took is written down (fdatasync) before
anything else happens to the message, so the only message sent twice is one the next hop
took in the moment before the crash, before that line reached the disk."""

from __future__ import annotations

import heapq
import itertools
import logging
import pathlib
import queue
import smtplib
import socket
import threading
import time
from collections.abc import Callable

from smtpgate.connectors.specs import NextHop, QueueSettings

from . import backpressure, delivery, dsn, health, retries, spill, spoolfile, workers
from .relay import RelayDelivery
from .replies import Reply, one_line

log = logging.getLogger(__name__)

SCAN_SECONDS = 5.0
# A scan lists and stats the whole spool (some 8 us a message): the next comes at least
# SCAN_SHARE times as long as the last took, so a big queue is scanned less often.
SCAN_SHARE = 50


class QueueRunner:
    """Delivers the spool at ``root`` through ``relay``, ``settings.concurrency`` messages
    at once, on threads of its own."""

    def __init__(
        self,
        root: str | pathlib.Path,
        relay: RelayDelivery,
        settings: QueueSettings,
        fqdn: str,
        scan_seconds: float = SCAN_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = pathlib.Path(root)
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        self.relay, self.settings, self.fqdn = relay, settings, fqdn
        self.remote = f"{relay.host}:{relay.port}"
        self.scan_seconds, self.clock = scan_seconds, clock
        self._due: dict[str, float] = {}  # name -> when its next try is due
        self._folder: dict[str, str] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._count = itertools.count()
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._jobs: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")
        self.last_scan: dict[str, float] | None = None  # what /queue reports

    def start(self) -> None:
        threads = [threading.Thread(target=self._schedule, name="queue", daemon=True)]
        threads += [
            threading.Thread(target=self._work, name=f"queue-{n}", daemon=True)
            for n in range(self.settings.concurrency)
        ]
        self._threads = threads
        for thread in threads:
            thread.start()

    def stop(self, grace: float = 10) -> None:
        """No new tries; wait up to ``grace`` seconds for those under way (a try cut off
        later is safe: its message stays in the spool)."""
        self._stopping = True
        self._wake.set()
        for _ in self._threads[1:]:
            self._jobs.put(None)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0, deadline - time.monotonic()))

    def notify(self, names: list[str]) -> None:
        """Messages just committed to new/ (called from the thread that committed them)."""
        with self._lock:
            for name in names:
                self._push(name, 0.0, "new")
        self._wake.set()

    def _push(self, name: str, due: float, folder: str) -> None:
        self._due[name] = due
        self._folder[name] = folder
        heapq.heappush(self._heap, (due, next(self._count), name))

    def _schedule(self) -> None:
        workers.free_thread()  # a pinned worker's helper runs on any of its CPUs
        next_scan = 0.0
        while not self._stopping:
            now = self.clock()
            if now >= next_scan:
                began = time.monotonic()
                try:
                    self._scan(now)
                except OSError as err:
                    log.warning("cannot read the spool %s: %s", self.root, err)
                spent = time.monotonic() - began
                next_scan = now + max(self.scan_seconds, spent * SCAN_SHARE)
            wait = next_scan - now
            with self._lock:
                while self._heap and len(self._inflight) < self.settings.concurrency:
                    due, _, name = self._heap[0]
                    if self._due.get(name) != due or name in self._inflight:
                        heapq.heappop(self._heap)  # superseded
                        continue
                    if due > now:
                        wait = min(wait, due - now)
                        break
                    heapq.heappop(self._heap)
                    self._inflight.add(name)
                    self._jobs.put(name)
            self._wake.wait(max(0.0, wait))
            self._wake.clear()

    def _scan(self, now: float) -> None:
        with self._lock:
            known = set(self._due)  # before the listing: a name notified later stays
        found = spoolfile.names(self.root)
        present = {name for _, name, _ in found}
        with self._lock:
            for folder, name, _ in found:
                if name not in self._due and name not in self._inflight:
                    self._push(name, now, folder)
            for name in known - present - self._inflight:  # gone: another process had it
                self._due.pop(name, None)
                self._folder.pop(name, None)
        oldest = max((now - mtime for *_, mtime in found), default=0.0)
        self.last_scan = {"messages": len(found), "oldestSeconds": round(oldest, 1)}
        health.QUEUE_MESSAGES.set(len(found))
        health.QUEUE_OLDEST.set(oldest)
        spoolfile.forget_orphans(self.root, present)

    def _work(self) -> None:
        workers.free_thread()  # a pinned worker's helper runs on any of its CPUs
        while True:
            name = self._jobs.get()
            if name is None:
                return
            try:
                due = self._deliver(name, self._folder.get(name, "new"))
            except Exception:  # never lose the thread; the message stays for a later try
                log.exception("queued message %s: delivery failed", name)
                due = self.clock() + self.settings.retry_seconds
            with self._lock:
                self._inflight.discard(name)
                if due is None:
                    self._due.pop(name, None)
                    self._folder.pop(name, None)
                else:
                    self._push(name, due, self._folder.get(name, "new"))
            self._wake.set()

    def _deliver(self, name: str, folder: str) -> float | None:
        """One try of a queued message: when its next try is due, or None when it has
        left the spool (or another process has it: that one goes on with it)."""
        queued = spoolfile.Queued(self.root, folder, name)
        try:
            if not queued.open():
                return None if not queued.path.exists() else self.clock() + self.scan_seconds
        except spoolfile.Unreadable as err:
            queued.close()
            self._set_aside(queued, str(err))
            return None
        try:
            return self._try(queued)
        finally:
            queued.close()

    def _try(self, queued: spoolfile.Queued) -> float | None:
        env, record, now = queued.envelope, queued.record, self.clock()
        pending = [i for i in range(len(env.recipients)) if i not in record.settled]
        age = now - queued.arrived
        if pending and retries.expired(age, self.settings.expiration_seconds):
            hours = self.settings.expiration_seconds / 3600
            expired = [
                (
                    i,
                    0,
                    f"4.4.7 Message expired after {hours:g} hours in the queue; last "
                    f"reply: {record.last_error.get(i, 'none')}",
                )
                for i in pending
            ]
            self._bounce(queued, expired, "expired")
            pending = []
        if not pending:
            queued.remove()
            return None
        if record.next_try > now:  # deferred by another worker (or before a restart)
            return min(record.next_try, now + self.settings.max_retry_seconds)
        try:
            answers = self.relay.attempt(queued.message(pending))
            reason = "temporary"
        except (OSError, smtplib.SMTPException) as err:
            text = f"4.4.1 Next hop {self.remote} unavailable: {one_line(str(err))}"
            answers, reason = [(451, text)] * len(pending), "unavailable"
        done, refused, deferred = [], [], []
        for index, (code, text) in zip(pending, answers, strict=True):
            kind = retries.outcome(code)
            if kind is retries.Outcome.DELIVERED:
                done.append(index)
            elif kind is retries.Outcome.REFUSED:
                refused.append((index, code, text))
            else:
                deferred.append((index, code, text))
        health.QUEUE_DELIVERED.inc(len(done))
        if not deferred and not refused:
            queued.remove()
            return None
        queued.note([f"delivered {i}" for i in done], durable=True)
        if refused:
            self._bounce(queued, refused, "refused")
        if not deferred:
            queued.remove()
            return None
        health.QUEUE_DEFERRED.labels(reason).inc()
        wait = retries.backoff(age, self.settings.retry_seconds, self.settings.max_retry_seconds)
        lines = [f"deferred {i} {code} {text}" for i, code, text in deferred]
        queued.note([*lines, f"next {now + wait:.3f}"], durable=False)
        log.info(
            "queued message %s deferred for %d recipients, next try in %ds: %s %s",
            queued.name,
            len(deferred),
            wait,
            deferred[0][1],
            deferred[0][2],
        )
        return now + wait

    def _bounce(
        self, queued: spoolfile.Queued, failed: list[tuple[int, int, str]], reason: str
    ) -> None:
        """Tell the sender (a notice into the spool, durable), then write the recipients
        down as settled."""
        env = queued.envelope
        told = [
            dsn.Failure(env.recipients[i], code, text, _orcpt(env.option(i, "ORCPT")))
            for i, code, text in failed
            if retries.notify_failure(env.mail_from, env.option(i, "NOTIFY"))
        ]
        health.QUEUE_BOUNCED.labels(reason).inc(len(failed))
        listed = ", ".join(f"{env.recipients[i]} ({code} {text})" for i, code, text in failed)
        if told:
            name = f"{time.time_ns()}.{delivery.new_queue_id()}.{self._host}"
            envelope = f"X-Smtpgate-Envelope: from=<>; to=<{delivery.xtext(env.mail_from)}>"
            if (env.mail_option("BODY") or "").upper() == "8BITMIME":
                envelope += f"; mail=<{delivery.xtext('BODY=8BITMIME')}>"
            notice = dsn.notice(
                reporting_mta=self.fqdn,
                remote_mta=self.remote,
                sender=env.mail_from,
                queue_id=queued.name,
                arrived=queued.arrived,
                envid=_xtext_value(env.mail_option("ENVID")),
                failures=told,
                headers_only=(env.mail_option("RET") or "").upper() == "HDRS",
                size=queued.size,
                original=queued.chunks(),
            )
            spoolfile.write_message(self.root, name, [(envelope + "\r\n").encode(), *notice])
            self.notify([name])
            log.info("queued message %s returned to <%s>: %s", queued.name, env.mail_from, listed)
        else:
            log.warning(
                "queued message %s from <%s> not delivered, no notice sent: %s",
                queued.name,
                env.mail_from,
                listed,
            )
        queued.note([f"bounced {i} {code} {text}" for i, code, text in failed], durable=True)

    def _set_aside(self, queued: spoolfile.Queued, why: str) -> None:
        """A file the queue cannot read goes to bad/ for an administrator, never away."""
        (self.root / "bad").mkdir(exist_ok=True)
        try:
            queued.path.rename(self.root / "bad" / queued.name)
            log.error("spool file %s set aside in bad/: %s", queued.name, why)
        except OSError as err:
            log.error("spool file %s unreadable (%s) and not set aside: %s", queued.name, why, err)


def _xtext_value(value: str | None) -> str | None:
    return spoolfile.unxtext(value) if value else None


def _orcpt(value: str | None) -> str | None:
    return spoolfile.unxtext(value) if value else None


class QueuedDelivery:
    """The StoreAndForward mode: a maildir spool (250 once durable there) and the queue
    that delivers it to the next hop."""

    def __init__(
        self,
        next_hop: NextHop,
        spool: str | None = None,
        helo: str | None = None,
        spool_sync: str | None = None,
        scan_seconds: float = SCAN_SECONDS,
    ) -> None:
        if not next_hop.host or not next_hop.port:
            raise ValueError(f"a {next_hop.type} next hop needs host and port")
        root = spool or next_hop.path
        guard = backpressure.SpoolGuard.from_storage(root, next_hop.storage)
        sync = spool_sync or next_hop.sync.lower()
        # No spool journal here: the queue takes a message from new/ at once, and only a
        # file durable in its own right may be taken (a journal's recovery could not tell
        # a message the queue delivered and removed from one a crash lost).
        self.spool = delivery.MaildirDelivery(root, sync=sync, guard=guard, journal_bytes=0)
        self.relay = RelayDelivery(
            next_hop.host,
            next_hop.port,
            lmtp=next_hop.type == "Lmtp",
            helo=helo,
            tls=next_hop.tls_mode,
        )
        self.runner = QueueRunner(
            root, self.relay, next_hop.queue_settings, helo or socket.getfqdn(), scan_seconds
        )
        self.spool.on_commit = self.runner.notify
        self.runner.start()

    async def deliver(self, message: delivery.Message) -> None:
        await self.spool.deliver(message)

    def spill(
        self,
        queue_id: str,
        mail_from: str,
        recipients: tuple[str, ...],
        mail_options: tuple[str, ...] = (),
        rcpt_options: tuple[tuple[str, ...], ...] = (),
    ) -> spill.Spill:
        return self.spool.spill(queue_id, mail_from, recipients, mail_options, rcpt_options)

    def withheld(self) -> frozenset[str]:
        """DSN is the queue's own to honour; 8BITMIME only where the next hop takes it."""
        return self.relay.withheld() & {"8BITMIME"}

    def admit(self) -> Reply | None:
        return self.spool.admit()

    def close(self) -> None:
        self.runner.stop()
        self.spool.close()
        self.relay.close()
