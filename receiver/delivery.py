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
from typing import Any, Protocol

from smtpgate.connectors.specs import NextHop

from . import backpressure, health, journal, spill, spool_journal
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
    them all into tmp/ and makes the whole group durable at once. With ``sync="filesystem"``
    (the default on Linux) on a filesystem whose journal commits in order (XFS, and ext4
    with a journal in ordered data mode: ``orders_data``), that takes one journal commit:
    each file's data is written to the device (``sync_file_range(2)``, which commits
    nothing), the files are renamed into new/, and one fsync of new/ commits the journal,
    whose commit record is written only after a cache flush, so the renames reach stable
    storage together with, never before, the data and allocations that preceded them. On
    other filesystems (ext4 without a journal among them), the group's data is synced
    first (``syncfs(2)``), then renamed and new/ fsynced: two commits.
    ``sync="file"`` (for filesystems whose syncfs does not reach stable storage, such as
    some network filesystems) fsyncs each file, then renames and fsyncs new/. In every
    mode a name in new/ never holds less than the whole message, after a crash too, and
    the client hears 250 only once the name is durable. While one group commits the next
    gathers, so the group grows with the load and a lone message waits for no one. If the
    commit fails, every message of the group is taken out of the spool again and its
    client hears 451.

    With a journal (``journal_bytes``, the default, on ext4 and XFS: ``journal_pays``), a
    group of messages held in memory (none spilled) is instead appended to this process's
    journal and made durable there with one ``fdatasync``, which commits nothing of the
    filesystem's own journal; then each is written into tmp/ and renamed into new/, and
    the client hears 250 (``spool_journal``). A group the journal has no room for, a
    spilled message, or a journal that failed takes the path above."""

    def __init__(
        self,
        root: str | pathlib.Path,
        sync: str | None = None,
        ordered: bool | None = None,
        guard: backpressure.SpoolGuard | None = None,
        journal_bytes: int = journal.LIMIT_BYTES,
    ) -> None:
        self.root = pathlib.Path(root)
        self.guard = guard or backpressure.SpoolGuard(self.root)
        # Called with the names of each group now in new/, from the thread that committed
        # it (the committer, or the event loop for a lone message).
        self.on_commit: Callable[[list[str]], None] | None = None
        self.sync = sync or ("filesystem" if _syncfs is not None else "file")
        if self.sync not in ("filesystem", "file"):
            raise ValueError(f"unknown spool sync {self.sync!r}: filesystem or file")
        if self.sync == "filesystem" and _syncfs is None:
            raise ValueError("syncfs(2) is not available here: use sync='file'")
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # As strings: a pathlib join costs more than the rest of staging a small message.
        self._tmp, self._new = str(self.root / "tmp") + "/", str(self.root / "new") + "/"
        if ordered is None:
            ordered = orders_data(self.root)
        # One journal commit per group (see above): "filesystem" sync on XFS, or ext4
        # with a journal that orders data.
        self.ordered = self.sync == "filesystem" and ordered and _sync_file_range is not None
        self._clear_stale()
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")
        self._waiting: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._committer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._in_flight = 0  # messages in deliver()
        self._new_fd = -1  # new/, open for its fsyncs
        self.groups = 0  # group commits so far
        # Whether the event loop serves nothing but the session delivering (the server
        # sets it): then a message with no other in flight commits on the loop itself.
        self.alone: Callable[[], bool] = lambda: False
        self.journal: spool_journal.SpoolJournal | None = None
        if journal_bytes > 0 and journal_pays(self.root):
            self.journal = spool_journal.SpoolJournal.open(self, journal_bytes)

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

    @property
    def group_commit(self) -> str:
        """How a group is made durable, for ``/spool``: ``OneJournalCommit`` (where the
        journal orders data), ``SyncfsThenDirectory``, or ``FsyncEachFile``."""
        if self.ordered:
            return "OneJournalCommit"
        return "SyncfsThenDirectory" if self.sync == "filesystem" else "FsyncEachFile"

    def journal_report(self) -> dict[str, Any] | None:
        """This process's journal for ``/spool`` (``SpoolJournal.report``); None without."""
        return None if self.journal is None else self.journal.report()

    async def deliver(self, message: Message) -> None:
        done = asyncio.get_running_loop().create_future()
        pending = _Pending(message, done)
        with self._lock:
            self._in_flight += 1
            alone = self._in_flight == 1 and self.alone()
        try:
            if alone:
                # Nothing else to commit and nobody else on this event loop: the commit
                # runs here at once, without two hand-overs between threads (c=1).
                self._commit([pending], settle=False)
                error = pending.error
            else:
                self._start()
                self._waiting.put(pending)
                error = await done
        finally:
            with self._lock:
                self._in_flight -= 1
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
        if self.journal is not None:
            self.journal.close()
        with self._lock:
            fd, self._new_fd = self._new_fd, -1
        if fd >= 0:
            os.close(fd)

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

    def _sync_new(self) -> None:
        """fsync new/ (opened once)."""
        if self._new_fd < 0:
            with self._lock:
                if self._new_fd < 0:
                    self._new_fd = os.open(self.root / "new", os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(self._new_fd)

    def _commit(self, group: list[_Pending], settle: bool = True) -> None:
        self.groups += 1
        health.SPOOL_GROUP.observe(len(group))
        # The names are made once: a group the journal gave back after writing some of
        # its records lands in new/ under the records' names, which recovery then finds.
        names = [self._name(pending.message.queue_id) for pending in group]
        if self.journal is None or not self._journaled(group, names):
            self._commit_files(group, names)
        if settle:
            self._settle(group)

    def _commit_files(self, group: list[_Pending], names: list[str]) -> None:
        """Data first, then names: every file's data of the group is on the device (and,
        unless ``ordered``, durable) before any is renamed into new/, so new/ never holds a
        message that a crash could leave empty; then new/ is synced, which also commits the
        renames' journal transaction where ``ordered``."""
        staged: list[tuple[_Pending, str, str, int]] = []
        for pending, name in zip(group, names, strict=True):
            try:
                staged.append((pending, *self._stage(pending.message, name)))
            except OSError as err:
                pending.error = err
        try:
            if staged:
                if self.ordered:
                    _write_back([fd for *_, fd in staged])
                elif self.sync == "file":
                    for *_, fd in staged:
                        os.fsync(fd)
                else:
                    _fsync_filesystem(self.root / "tmp")
                for _, tmp, final, _ in staged:
                    os.rename(tmp, final)
                self._sync_new()
                if self.on_commit is not None:
                    self.on_commit([os.path.basename(final) for _, _, final, _ in staged])
        except OSError as err:
            for pending, tmp, final, _ in staged:
                pending.error = err
                for path in (tmp, final):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        finally:
            for *_, fd in staged:
                os.close(fd)

    @staticmethod
    def _settle(group: list[_Pending]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for pending in group:
            by_loop.setdefault(pending.done.get_loop(), []).append(pending)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a loop closed while we committed
                loop.call_soon_threadsafe(_resolve, settled)

    def _stage(self, message: Message, name: str) -> tuple[str, str, int]:
        """Write ``message`` into tmp/ as ``name`` (a spilled message is there already,
        under its own): its path there, its path in new/, and the open file (the caller's
        to close)."""
        spilled = message.spilled
        if spilled is not None and spilled.path is not None:
            return str(spilled.path), self._new + spilled.name, spilled.detach()
        return self._tmp + name, self._new + name, self._write_tmp(name, _parts(message))

    def _write_tmp(self, name: str, parts: tuple[bytes, bytes]) -> int:
        """tmp/``name`` made and ``parts`` written to it: the open file."""
        tmp = self._tmp + name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            # Both parts in one call, without joining them (a copy of the whole message).
            written = os.writev(fd, parts)
            if written < len(parts[0]) + len(parts[1]):  # a short write
                rest = memoryview(b"".join(parts))[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd

    # -- the journal's side ------------------------------------------------------------

    def _journaled(self, group: list[_Pending], names: list[str]) -> bool:
        """The group committed through the journal under ``names``; False when it does
        not take it (a spilled message, no room, a journal that failed now): nothing of
        it acknowledged."""
        assert self.journal is not None
        if any(pending.message.spilled is not None for pending in group):
            return False
        named = [(n, _parts(p.message)) for p, n in zip(group, names, strict=True)]
        errors = self.journal.commit(named)
        if errors is None:
            return False
        for pending, error in zip(group, errors, strict=True):
            if error is not None:
                pending.error = error
        return True

    def write_new(self, name: str, parts: tuple[bytes, bytes], durable: bool = False) -> None:
        """The file ``name`` written into tmp/ and renamed into new/. ``durable``: synced
        first (recovery), over what a crash may have left in tmp/ under that name."""
        tmp = self._tmp + name
        if durable:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fd = self._write_tmp(name, parts)
        try:
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, self._new + name)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def sync_files(self, names: list[str]) -> None:
        """The files renamed into new/ under ``names`` durable with their names, wherever
        a reader has moved them since (cur/); a name no longer there was taken."""
        if self.sync == "file":
            moved: dict[str, str] | None = None
            for name in names:
                try:
                    fsync_path(self._new + name)
                except FileNotFoundError:
                    if moved is None:
                        cur = self.root / "cur"
                        moved = {n.split(":", 1)[0]: str(cur / n) for n in os.listdir(cur)}
                    if name in moved:
                        with contextlib.suppress(FileNotFoundError):
                            fsync_path(moved[name])
            if moved:
                fsync_path(str(self.root / "cur"))
        else:
            _fsync_filesystem(self.root)
        self._sync_new()


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


def _parts(message: Message) -> tuple[bytes, bytes]:
    """A message's file in two parts: the envelope line and the content."""
    envelope = _envelope(
        message.mail_from, message.recipients, message.mail_options, message.rcpt_options
    )
    return envelope, message.content


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


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync(2) of the file or folder at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# sync_file_range(2) flags
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
# Filesystems whose journal commits in order, so that a commit that makes a rename durable
# also makes durable every allocation and size change made before it, after a cache flush
# that covers the data written before it: XFS always, ext4 only with a journal in
# data=ordered or data=journal mode (``orders_data``).
ORDERED_FILESYSTEMS = frozenset({"ext4", "xfs"})
# ext4's data modes whose journal commits a rename only after the data written before it.
EXT4_ORDERED_MODES = frozenset({"data=ordered", "data=journal"})


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return function  # type: ignore[no-any-return]


_sync_file_range = _load_sync_file_range()


def _write_back(fds: list[int]) -> None:
    """Every file's data written to the device (waited for, errors reported), without a
    journal commit: first all writes started, then each waited for."""
    assert _sync_file_range is not None
    waits = (_WAIT_BEFORE | _WRITE | _WAIT_AFTER,)
    for flags in waits if len(fds) == 1 else (_WRITE, *waits):
        for fd in fds:
            if _sync_file_range(fd, 0, 0, flags) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, os.strerror(errno))


@dataclass(frozen=True)
class Mount:
    """The filesystem a path is on, from /proc/self/mountinfo."""

    point: str
    fstype: str
    device: str  # major:minor


def mount_of(path: pathlib.Path, proc: pathlib.Path = pathlib.Path("/proc")) -> Mount | None:
    """The filesystem ``path`` is on (the longest mount point above it), or None where
    that cannot be read."""
    try:
        mounts = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    where, found = os.path.realpath(path), None
    for line in mounts:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        point = _ESCAPED.sub(lambda m: chr(int(m[1], 8)), parts[4])  # space, tab, \\, ...
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and (found is None or len(point) >= len(found.point)):
            found = Mount(point, rest.split()[0], parts[2])
    return found


_ESCAPED = re.compile(r"\\([0-7]{3})")  # mountinfo's octal escapes


def _on(path: pathlib.Path, mount: Mount) -> bool:
    """Whether ``path`` (or, not made yet, the nearest folder above it) is on ``mount``'s
    device: a mount point listed longest may still be hidden by a later mount above it."""
    where = pathlib.Path(os.path.realpath(path))
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        device = os.stat(where).st_dev
    except OSError:
        return False
    major, _, minor = mount.device.partition(":")
    return device == os.makedev(int(major), int(minor))


def orders_data(
    path: pathlib.Path,
    proc: pathlib.Path = pathlib.Path("/proc"),
    sys_root: pathlib.Path = pathlib.Path("/sys"),
) -> bool:
    """Whether the filesystem ``path`` is on commits a rename only together with the data
    and allocations written before it (see ``ORDERED_FILESYSTEMS``): XFS, and ext4 whose
    options in /proc/fs/ext4/<device>/options name a journal's ordered or journal data
    mode. ext4 made without a journal (its options name no data mode) or mounted
    ``data=writeback`` does not: a crash could leave a renamed name with no data behind
    it. Anything that cannot be read counts as not ordered (two commits, safe anywhere)."""
    mount = mount_of(path, proc)
    if mount is None or mount.fstype not in ORDERED_FILESYSTEMS or not _on(path, mount):
        return False
    if mount.fstype != "ext4":
        return True
    try:
        # /proc/fs/ext4 names the device as the kernel does (vda, sda1, dm-0, loop0).
        name = os.path.basename(os.readlink(sys_root / "dev" / "block" / mount.device))
        options = (proc / "fs" / "ext4" / name / "options").read_text().split()
    except OSError:
        return False
    return not EXT4_ORDERED_MODES.isdisjoint(options)


# Filesystems where an overwrite of written blocks needs no metadata commit, so that the
# journal's fdatasync costs less than a new file's commit. Elsewhere (tmpfs, where nothing
# is synced; copy-on-write and network filesystems) a group is committed as files.
JOURNAL_FILESYSTEMS = frozenset({"ext4", "xfs"})


def journal_pays(path: pathlib.Path, proc: pathlib.Path = pathlib.Path("/proc")) -> bool:
    """Whether ``path`` is on a filesystem the spool journal is used on."""
    mount = mount_of(path, proc)
    return mount is not None and mount.fstype in JOURNAL_FILESYSTEMS and _on(path, mount)


def from_next_hop(
    next_hop: NextHop,
    spool: str | None = None,
    helo: str | None = None,
    spool_sync: str | None = None,
    journal_bytes: int = journal.LIMIT_BYTES,
) -> Delivery:
    """The delivery a server's next hop asks for (``spool`` and ``spool_sync`` override a
    Maildir path and its sync; ``journal_bytes`` is a Maildir spool's journal limit, 0
    none; a store-and-forward spool has none)."""
    if next_hop.store_and_forward:
        from .queue import QueuedDelivery  # the queue builds on this module and the relay

        return QueuedDelivery(next_hop, spool, helo=helo, spool_sync=spool_sync)
    if next_hop.type == "Maildir" or spool:
        guard = backpressure.SpoolGuard.from_storage(spool or next_hop.path, next_hop.storage)
        return MaildirDelivery(
            spool or next_hop.path,
            sync=spool_sync or next_hop.sync.lower(),
            guard=guard,
            journal_bytes=journal_bytes,
        )
    if not next_hop.host or not next_hop.port:
        raise ValueError(f"a {next_hop.type} next hop needs host and port")
    from .relay import RelayDelivery  # relay builds on this module

    return RelayDelivery(
        next_hop.host,
        next_hop.port,
        lmtp=next_hop.type == "Lmtp",
        helo=helo,
        tls=next_hop.tls_mode,
    )
