"""How the maildir spool uses its journal (``journal``): the journal a process writes, a
group committed through it, the checkpoints that make its files durable, and the recovery
of a journal a process left behind.

A group of messages held in memory is appended to this process's journal and made durable
there with one ``fdatasync``; each message is then written into tmp/ and renamed into
new/, without a sync of its own, and its client hears 250. While the journal holds
records, a checkpoint every ``journal.CHECKPOINT_SECONDS`` (at once when it is half full)
makes the files renamed since the last one durable (``MaildirDelivery.sync_files``), then
writes the journal's header, which frees their records; only then does the spool's
``on_commit`` hear of them, so the queue delivers a message only once it is durable as a
file. A checkpoint that fails leaves the journal as it is, used no more: its records stay
for whoever takes it next, and the spool commits each group as files from then on.

A journal no process holds (its worker died, a receiver ran with more workers before, a
replica's node went down) is taken by the next spool on the folder, or by the drain. Every
record since its checkpoint is held against the spool: a file in new/ with the record's
bytes, or one in cur/ (where a maildir reader moves what it has seen) of its length, is
kept; anything else (no file, an empty or short one: what a crash of the machine or of the
filesystem leaves of files not yet synced) is written again from the record. Then the
files are synced and the journal emptied. After a worker was killed, its files are all
there and nothing is written again; a file a consumer other than the queue took from new/
before its checkpoint comes back, once."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from . import journal, workers

if TYPE_CHECKING:
    from .delivery import MaildirDelivery

log = logging.getLogger(__name__)


class SpoolJournal:
    """This process's journal on a spool, and the thread that takes its checkpoints."""

    def __init__(self, spool: MaildirDelivery, file: journal.Journal) -> None:
        self.spool = spool
        self.file = file
        self.failed: str | None = None  # why it is used no more
        # Appends with their renames, and a checkpoint's mark and header, one at a time:
        # a mark then covers only renamed files, and no two fdatasyncs of the journal run
        # at once (one could take the other's write error).
        self._lock = threading.Lock()
        self._checkpointing = threading.Lock()
        self._renamed: list[str] = []  # since the last checkpoint
        self._due = threading.Condition()
        self._urgent = False  # a checkpoint wanted before the interval ends
        self._closing = False
        self._thread = threading.Thread(
            target=self._checkpoints, name="spool-checkpoint", daemon=True
        )
        self._thread.start()

    @classmethod
    def open(cls, spool: MaildirDelivery, limit: int) -> SpoolJournal | None:
        """This process's journal in ``spool``: the first that no process holds, once
        recovered (``recover``), or a new one; None when the folder cannot be used."""
        folder = spool.root / journal.FOLDER
        try:
            folder.mkdir(exist_ok=True)
            mine = recover(spool, limit, keep=True)
            number = 0
            while mine is None:
                with contextlib.suppress(FileExistsError):
                    mine = journal.Journal.create(folder / str(number), limit)
                number += 1
        except OSError as err:
            log.error("spool journal unusable, messages are committed as files: %s", err)
            return None
        return cls(spool, mine)

    def commit(self, group: list[tuple[str, tuple[bytes, bytes]]]) -> list[OSError | None] | None:
        """``group`` (each message's maildir name and file) made durable in the journal
        and renamed into new/: each message's error, None where it is in new/. None when
        the journal did not take the group (no room, or it failed): nothing of it was
        acknowledged, and the caller commits it as files."""
        with self._lock:
            if self.failed is not None or self._closing:
                return None
            was_empty = self.file.empty
            try:
                taken = self.file.append(group)
            except OSError as err:
                self._fail(err)
                return None
            errors: list[OSError | None] = []
            if taken:
                for name, parts in group:
                    try:
                        self.spool.write_new(name, parts)
                    except OSError as err:  # durable in the journal, not in new/: 451
                        errors.append(err)
                    else:
                        errors.append(None)
                        self._renamed.append(name)
            half_full = self.file.used() * 2 > self.file.limit
        if not taken or was_empty or half_full:
            self._wake(urgent=not taken or half_full)
        return errors if taken else None

    def checkpoint(self) -> None:
        """Make every file renamed into new/ so far durable and free its record, then tell
        the spool's ``on_commit``. A failure leaves the journal unused from now on."""
        with self._checkpointing:
            with self._lock:
                if self.failed is not None or self.file.empty:
                    return
                mark = self.file.mark()
                names, self._renamed = self._renamed, []
            try:
                self.spool.sync_files(names)
                with self._lock:
                    self.file.checkpoint(mark)
            except OSError as err:
                with self._lock:
                    self._fail(err)
                return
        if names and self.spool.on_commit is not None:
            self.spool.on_commit(names)

    def _fail(self, err: OSError) -> None:
        self.failed = str(err)
        log.error(
            "spool journal %s failed, messages are committed as files from now on; its "
            "records stay for the next receiver on the spool: %s",
            self.file.path,
            err,
        )

    def _wake(self, urgent: bool) -> None:
        with self._due:
            self._urgent = self._urgent or urgent
            self._due.notify()

    def _checkpoints(self) -> None:
        workers.free_thread()  # a pinned worker's helper runs on any of its CPUs
        due = self._due
        while True:
            with due:
                due.wait_for(lambda: self._closing or not self._idle())
                due.wait_for(lambda: self._closing or self._urgent, journal.CHECKPOINT_SECONDS)
                if self._closing:
                    return
                self._urgent = False
            try:
                self.checkpoint()
            except Exception:  # never lose the thread: the journal would fill up
                log.exception("spool checkpoint")

    def _idle(self) -> bool:
        return self.failed is not None or self.file.empty

    def close(self) -> None:
        """A last checkpoint, then the file closed (a journal that failed keeps its
        records for the next receiver)."""
        with self._due:
            self._closing = True
            self._due.notify()
        self._thread.join()
        self.checkpoint()
        with self._lock:
            self.file.close()

    def report(self) -> dict[str, Any]:
        """For ``/spool``: its file, size and limit, records since the checkpoint, records
        appended and checkpoints taken, and why it failed (null while it serves)."""
        file = self.file
        return {
            "file": os.path.relpath(file.path, self.spool.root),
            "bytes": file.size,
            "limitBytes": file.limit,
            "records": file.sequence - file.tail_sequence,
            "appended": file.appended,
            "checkpoints": file.checkpoints,
            "failed": self.failed,
        }


def recover(
    spool: MaildirDelivery, limit: int = journal.LIMIT_BYTES, keep: bool = False
) -> journal.Journal | None:
    """Recover every journal in ``spool`` that no process holds (``_restore``). With
    ``keep`` the first stays locked, this process's own (returned); the rest are closed."""
    folder = spool.root / journal.FOLDER
    if not folder.is_dir():
        return None
    kept = None
    try:
        for path in sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name)):
            try:
                taken = journal.Journal.take(path, limit)
            except journal.NotAJournal as err:
                log.warning("spool journal left alone: %s", err)
                continue
            if taken is None:
                continue
            try:
                _restore(spool, taken)
                taken.renew()
            except BaseException:
                taken.close()
                raise
            if keep and kept is None:
                kept = taken
            else:
                taken.close()
    except BaseException:
        if kept is not None:
            kept.close()
        raise
    return kept


def _restore(spool: MaildirDelivery, taken: journal.Journal) -> None:
    """Hold every record ``taken`` has since its checkpoint against the spool, write again
    the messages whose files are missing or damaged, sync them all, and empty it."""
    records = taken.recover()
    if not records:
        return
    # cur/: a maildir reader's name for a message is ours with ":2,<flags>" after it
    seen = {entry.name.split(":", 1)[0]: entry for entry in os.scandir(spool.root / "cur")}
    again = []
    for record in records:
        try:
            whole = (spool.root / "new" / record.name).read_bytes() == record.data
        except FileNotFoundError:
            moved = seen.get(record.name)
            try:
                whole = moved is not None and moved.stat().st_size == len(record.data)
            except FileNotFoundError:
                whole = False
        if not whole:
            again.append(record)
    for record in again:
        spool.write_new(record.name, (record.data, b""), durable=True)
    rewritten = {record.name for record in again}
    spool.sync_files([record.name for record in records if record.name not in rewritten])
    taken.checkpoint(taken.mark())
    if again:
        log.warning(
            "spool journal %s: %d of the %d messages since its checkpoint written again into "
            "new/ (their files were missing or short: a crash of the machine or filesystem)",
            taken.path,
            len(again),
            len(records),
        )
    else:
        log.info(
            "spool journal %s: %d messages since its checkpoint synced", taken.path, len(records)
        )
