"""Where accepted messages go. ``Delivery.deliver`` returns only once the message is
durable; the client hears 250 only after that."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import pathlib
import queue
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from smtpgate.connectors.specs import NextHop

from . import backpressure, health, spill
from .replies import Reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """An accepted message: envelope and the bytes to hand on (trace headers included):
    ``content`` when the message is small, else the file it was spilled to, which from
    now on is the delivery's to remove or keep."""

    queue_id: str
    connector: str
    mail_from: str
    recipients: tuple[str, ...]
    content: bytes
    spilled: spill.Spill | None = None
    mail_options: tuple[str, ...] = ()  # as the client gave them (BODY=, RET=, ENVID=)
    rcpt_options: tuple[tuple[str, ...], ...] = ()  # per recipient (NOTIFY=, ORCPT=)
    trace_size: int = 0  # octets of trace headers this server put in front

    @property
    def size(self) -> int:
        return self.spilled.size if self.spilled is not None else len(self.content)

    def chunks(self) -> Iterator[bytes]:
        if self.spilled is None:
            yield self.content
        else:
            yield from self.spilled.chunks()

    def option(self, name: str) -> str | None:
        """The value of a MAIL parameter (``BODY``), upper case."""
        prefix = name.upper() + "="
        found = [o[len(prefix) :] for o in self.mail_options if o.upper().startswith(prefix)]
        return found[0].upper() if found else None

    def fingerprint(self) -> str:
        """The envelope and the message as the client sent it (before the trace headers):
        the same for every retry of one message."""
        digest = hashlib.sha256(repr((self.mail_from, self.recipients)).encode())
        skip = self.trace_size
        for chunk in self.chunks():
            digest.update(chunk[skip:])
            skip = max(0, skip - len(chunk))
        return digest.hexdigest()


class DeliveryError(Exception):
    """The message could not be made durable. ``code`` and ``text`` are the next hop's own
    refusal where it gave one (passed back to the client); otherwise the failure is
    temporary and the client hears 451."""

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class Delivery(Protocol):
    async def deliver(self, message: Message) -> None: ...

    def withheld(self) -> frozenset[str]:
        """EHLO keywords (DSN, 8BITMIME) not to offer: what this delivery cannot honour."""
        ...

    def admit(self) -> Reply | None:
        """The refusal new MAIL gets while this delivery cannot take more (a full spool)."""
        ...

    def spill(
        self,
        queue_id: str,
        mail_from: str,
        recipients: tuple[str, ...],
        mail_options: tuple[str, ...] = (),
        rcpt_options: tuple[tuple[str, ...], ...] = (),
    ) -> spill.Spill:
        """A file for a message too big to keep in memory (blocking: call off the loop)."""
        ...

    def close(self) -> None: ...


def new_queue_id() -> str:
    """16 hex digits. Unique, not secret: the random module (reseeded in every forked
    worker) costs a fraction of a system call for entropy on every message."""
    return f"{random.getrandbits(64):016X}"


class MaildirDelivery:
    """A maildir spool. Each message is written to tmp/ and renamed into new/, and
    ``deliver`` returns only once both the file and its directory entry are on stable
    storage. The envelope rides in a header line ``X-Smtpgate-Envelope`` at the top of the
    file: ``from=<sender>; to=<recipient>,<recipient>``, each address in ``xtext``, then,
    where the client gave any, ``; mail=<param> <param>`` (RET, ENVID, BODY, ...) and
    ``; rcpt=<params>,<params>`` (NOTIFY, ORCPT, one ``<>`` per recipient in order), each
    parameter in ``xtext`` too (``envelope.parse`` reads it back).

    Group commit: one committer thread takes every message waiting at that moment, writes
    them all into tmp/, makes the whole group durable at once, with ``syncfs(2)`` on the
    spool's filesystem (``sync="filesystem"``, the default on Linux) or an fsync of each
    file (``sync="file"``, for filesystems whose syncfs does not reach stable storage, such
    as some network filesystems), then renames them into new/ and fsyncs that directory
    once. While one group commits the next gathers, so the group grows with the load and a
    lone message waits for no one. If the commit fails, every message of the group is taken
    out of the spool again and its client hears 451."""

    def __init__(
        self,
        root: str | pathlib.Path,
        sync: str | None = None,
        guard: backpressure.SpoolGuard | None = None,
    ) -> None:
        self.root = pathlib.Path(root)
        self.guard = guard or backpressure.SpoolGuard(self.root)
        # Called from the committer thread with the names of each group now in new/.
        self.on_commit: Callable[[list[str]], None] | None = None
        self.sync = sync or ("filesystem" if _syncfs is not None else "file")
        if self.sync not in ("filesystem", "file"):
            raise ValueError(f"unknown spool sync {self.sync!r}: filesystem or file")
        if self.sync == "filesystem" and _syncfs is None:
            raise ValueError("syncfs(2) is not available here: use sync='file'")
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")
        self._waiting: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._committer: threading.Thread | None = None
        self._lock = threading.Lock()
        self.groups = 0  # group commits so far

    def _clear_stale(self) -> None:
        """Remove what a killed receiver left in tmp/: never acknowledged, never in new/.
        Only files older than maildir's 36 hours, as other workers share the folder."""
        cutoff = time.time() - STALE_SECONDS
        for entry in os.scandir(self.root / "tmp"):
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)

    def withheld(self) -> frozenset[str]:
        return frozenset()

    def admit(self) -> Reply | None:
        return self.guard.admit()

    def spill(
        self,
        queue_id: str,
        mail_from: str,
        recipients: tuple[str, ...],
        mail_options: tuple[str, ...] = (),
        rcpt_options: tuple[tuple[str, ...], ...] = (),
    ) -> spill.Spill:
        """The message's own file in tmp/, its envelope line written: the commit renames
        it into new/ like any other."""
        name = self._name(queue_id)
        path = self.root / "tmp" / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        spilled = spill.Spill(fd, path, name)
        try:
            envelope = _envelope(mail_from, recipients, mail_options, rcpt_options)
            spilled.write(envelope, message=False)
        except OSError:
            spilled.discard()
            raise
        return spilled

    def _name(self, queue_id: str) -> str:
        return f"{time.time_ns()}.{queue_id}.{self._host}"

    async def deliver(self, message: Message) -> None:
        done = asyncio.get_running_loop().create_future()
        self._start()
        self._waiting.put(_Pending(message, done))
        error = await done
        if error is not None:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise DeliveryError(f"spool write failed: {reason}")

    def close(self) -> None:
        """Commit what is waiting, then stop the committer thread."""
        with self._lock:
            committer, self._committer = self._committer, None
        if committer is not None:
            self._waiting.put(None)
            committer.join()

    def _start(self) -> None:
        if self._committer is None:
            with self._lock:
                if self._committer is None:
                    self._committer = threading.Thread(
                        target=self._commit_loop, name="spool-commit", daemon=True
                    )
                    self._committer.start()

    def _commit_loop(self) -> None:
        while True:
            first = self._waiting.get()
            group = [] if first is None else [first]
            stop = first is None
            while len(group) < MAX_GROUP:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            if group:
                try:
                    self._commit(group)
                except Exception as err:  # never leave a session waiting for an answer
                    log.exception("spool commit failed")
                    for pending in group:
                        pending.error = err
                    self._settle(group)
            if stop:
                return

    def _commit(self, group: list[_Pending]) -> None:
        """Data first, then names: every file of the group is durable in tmp/ before any is
        renamed into new/, so new/ never holds a message that a crash could leave empty."""
        self.groups += 1
        health.SPOOL_GROUP.observe(len(group))
        staged: list[tuple[_Pending, pathlib.Path, pathlib.Path, int | None]] = []
        for pending in group:
            try:
                staged.append((pending, *self._stage(pending.message)))
            except OSError as err:
                pending.error = err
        try:
            if staged:
                if self.sync == "file":
                    for *_, fd in staged:
                        assert fd is not None
                        os.fsync(fd)
                else:
                    _fsync_filesystem(self.root / "tmp")
                for _, tmp, final, _ in staged:
                    os.rename(tmp, final)
                _fsync_path(self.root / "new")
                if self.on_commit is not None:
                    self.on_commit([final.name for _, _, final, _ in staged])
        except OSError as err:
            for pending, tmp, final, _ in staged:
                pending.error = err
                for path in (tmp, final):
                    with contextlib.suppress(OSError):
                        path.unlink()
        finally:
            for *_, fd in staged:
                if fd is not None:
                    os.close(fd)
        self._settle(group)

    @staticmethod
    def _settle(group: list[_Pending]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for pending in group:
            by_loop.setdefault(pending.done.get_loop(), []).append(pending)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a loop closed while we committed
                loop.call_soon_threadsafe(_resolve, settled)

    def _stage(self, message: Message) -> tuple[pathlib.Path, pathlib.Path, int | None]:
        """Write ``message`` into tmp/ (a spilled message is there already): its path
        there, its path in new/, and the open file when ``sync`` is "file" (for its
        fsync)."""
        spilled = message.spilled
        if spilled is not None and spilled.path is not None:
            tmp, name, fd = spilled.path, spilled.name, spilled.detach()
            if self.sync == "file":
                return tmp, self.root / "new" / name, fd
            os.close(fd)
            return tmp, self.root / "new" / name, None
        name = self._name(message.queue_id)
        tmp = self.root / "tmp" / name
        envelope = _envelope(
            message.mail_from, message.recipients, message.mail_options, message.rcpt_options
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            data = memoryview(envelope + message.content)
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if self.sync == "file":
            return tmp, self.root / "new" / name, fd
        os.close(fd)
        return tmp, self.root / "new" / name, None


def _envelope(
    mail_from: str,
    recipients: tuple[str, ...],
    mail_options: tuple[str, ...] = (),
    rcpt_options: tuple[tuple[str, ...], ...] = (),
) -> bytes:
    line = (
        f"X-Smtpgate-Envelope: from=<{xtext(mail_from)}>; "
        f"to={','.join(f'<{xtext(r)}>' for r in recipients)}"
    )
    if mail_options:
        line += f"; mail=<{' '.join(map(xtext, mail_options))}>"
    if any(rcpt_options):
        line += "; rcpt=" + ",".join(f"<{' '.join(map(xtext, o))}>" for o in rcpt_options)
    return (line + "\r\n").encode()


_XTEXT_SAFE = re.compile(r"[A-Za-z0-9!#$%&'*/?^_`{|}~.@-]*")


def xtext(address: str) -> str:
    """``address`` as RFC 3461 xtext, where also every character the envelope header's own
    syntax uses (``<>;,"\\`` and space) is written ``+HH``: a quoted local part such as
    ``"x>; to=<evil@victim.example>"`` cannot pass for another field or recipient."""
    if _XTEXT_SAFE.fullmatch(address):
        return address
    return "".join(
        char
        if _XTEXT_SAFE.fullmatch(char)
        else "".join(f"+{b:02X}" for b in char.encode("utf-8", "surrogateescape"))
        for char in address
    )


MAX_GROUP = 256
STALE_SECONDS = 36 * 3600


@dataclass
class _Pending:
    message: Message
    done: asyncio.Future[Exception | None]
    error: Exception | None = None


def _resolve(group: list[_Pending]) -> None:
    for pending in group:
        if not pending.done.done():
            pending.done.set_result(pending.error)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def _fsync_filesystem(path: pathlib.Path) -> None:
    """syncfs(2): everything written on ``path``'s filesystem reaches stable storage (Linux
    reports writeback errors from it since 5.8)."""
    assert _syncfs is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    finally:
        os.close(fd)


def _fsync_path(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def from_next_hop(
    next_hop: NextHop,
    spool: str | None = None,
    helo: str | None = None,
    spool_sync: str | None = None,
) -> Delivery:
    """The delivery a server's next hop asks for (``spool`` and ``spool_sync`` override a
    Maildir path and its sync)."""
    if next_hop.store_and_forward:
        from .queue import QueuedDelivery  # the queue builds on this module and the relay

        return QueuedDelivery(next_hop, spool, helo=helo, spool_sync=spool_sync)
    if next_hop.type == "Maildir" or spool:
        guard = backpressure.SpoolGuard.from_storage(spool or next_hop.path, next_hop.storage)
        return MaildirDelivery(
            spool or next_hop.path, sync=spool_sync or next_hop.sync.lower(), guard=guard
        )
    if not next_hop.host or not next_hop.port:
        raise ValueError(f"a {next_hop.type} next hop needs host and port")
    from .relay import RelayDelivery  # relay builds on this module

    return RelayDelivery(next_hop.host, next_hop.port, lmtp=next_hop.type == "Lmtp", helo=helo)
