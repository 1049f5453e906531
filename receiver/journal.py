"""The spool's write-ahead journal: a small message is durable once its record is.

Making a new file's name durable costs a commit of the filesystem's journal (on ext4, the
jbd2 thread writes its blocks, flushes the device's cache, writes the commit record). An
overwrite of blocks that are already allocated and written costs only the write and one
cache flush: ``fdatasync(2)`` has no metadata to commit for it. So each worker keeps a file
of zeroed blocks, appends each group of messages to it as records, and answers 250 once one
``fdatasync`` of it returns. How the spool uses it (the files renamed into new/ at once,
the checkpoints that make them durable, recovery) is ``spool_journal``'s.

The file, ``smtpgate-journal/N`` in the spool, is locked with ``flock`` by the process that
writes it. It starts at ``INITIAL_BYTES`` and grows, zero-filled, up to the receiver's
limit; its space is a ring.

- Two header slots (the first two blocks), written in turn: the checkpoint (the first
  record not yet durable as a file, and where it starts) and the file's random salt. The
  slot with the higher generation and a good checksum counts.
- Records from the third block on, each at a block boundary (an acknowledged record never
  shares a block with a later write): magic, the salt, a sequence number, lengths, and a
  CRC-32 of header and payload (the message's maildir name, then its file).

Recovery reads the chain from the checkpoint: the record with the next sequence number
either where the last ended or, after a wrap, at the start of the ring; it stops at the
first that is missing, torn, or from an older lap. A record is only ever looked for where
the chain puts one, and must carry the file's salt (never sent anywhere), so a message
body that holds bytes shaped like a record is never taken for one.

Errors: ``NotAJournal`` (a ``ValueError``), for a file in the journal folder without a
valid header; ``OSError`` from the system calls."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import pathlib
import struct
import zlib
from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)

FOLDER = "smtpgate-journal"
BLOCK = 4096
SLOTS = 2  # header slots, the first two blocks
START = SLOTS * BLOCK  # where the ring of records starts
INITIAL_BYTES = 256 << 10
LIMIT_BYTES = 64 << 20  # the receiver's default (--spool-journal-mib)
MINIMUM_BYTES = 1 << 20
CHECKPOINT_SECONDS = 0.5

# magic, version, generation, salt, first sequence not checkpointed, its offset
_HEADER = struct.Struct("<4sIQQQQ")
_HEADER_MAGIC = b"SGJ1"
# magic, name length, salt, sequence, payload length (name and file)
_RECORD = struct.Struct("<4sIQQQ")
_RECORD_MAGIC = b"SGJR"
_CRC = struct.Struct("<I")
_ZEROS = bytes(BLOCK)
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


class NotAJournal(ValueError):
    """A file in the journal folder without a valid header."""


def _aligned(length: int) -> int:
    return -(-length // BLOCK) * BLOCK


@dataclasses.dataclass(frozen=True)
class Record:
    sequence: int
    name: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    generation: int
    salt: int
    sequence: int  # the first record not yet durable as a file
    offset: int  # where it starts (or would)


class Journal:
    """One worker's journal file, open and locked. Appends come one at a time (the spool
    holds a lock for them); a checkpoint may be taken from another thread meanwhile."""

    def __init__(self, path: pathlib.Path, fd: int, last: Checkpoint, limit: int) -> None:
        self.path = path
        self.fd = fd
        self.limit = max(limit, MINIMUM_BYTES)
        self.size = os.fstat(fd).st_size
        self.salt = last.salt
        self.generation = last.generation
        # The ring holds records [tail's sequence, sequence), from tail's offset to head.
        # The tail is one attribute, so a checkpoint moves both at once.
        self.sequence = last.sequence
        self.head = last.offset
        self._tail = (last.sequence, last.offset)
        self.appended = 0  # records written, for /spool
        self.checkpoints = 0

    @classmethod
    def create(cls, path: pathlib.Path, limit: int = LIMIT_BYTES) -> Journal:
        """A new journal at ``path``, locked; ``FileExistsError`` if there is one."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            # Waits while another process's ``take`` looks at it, still empty.
            fcntl.flock(fd, fcntl.LOCK_EX)
            first = Checkpoint(0, int.from_bytes(os.urandom(8), "little"), 1, START)
            for slot in range(SLOTS):
                state = dataclasses.replace(first, generation=slot)
                os.pwrite(fd, _header(state), slot * BLOCK)
            _zero(fd, START, INITIAL_BYTES)
            os.fsync(fd)
            _sync_folder(path.parent)
            return cls(path, fd, state, limit)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def take(cls, path: pathlib.Path, limit: int = LIMIT_BYTES) -> Journal | None:
        """The journal at ``path``, locked now by this process; None if another holds it
        or it is still being made. Raises ``NotAJournal`` for a file without a valid
        header."""
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            last = _last_checkpoint(fd)
            if last is None and os.fstat(fd).st_size < START:
                os.close(fd)  # being made, or a crash cut its making short: no record in it
                return None
            if last is None:
                raise NotAJournal(f"{path}: not a journal (no valid header)")
            return cls(path, fd, last, limit)
        except BaseException:
            os.close(fd)
            raise

    def recover(self) -> list[Record]:
        """The records since the checkpoint, in order, read as a crash left them; the ring
        then continues after them. Only they can be missing from the spool."""
        records = []
        sequence, offset = self._tail
        for record, after in _walk(self.fd, self.salt, sequence, offset):
            records.append(record)
            self.sequence, self.head = record.sequence + 1, after
        return records

    @property
    def empty(self) -> bool:
        return self._tail[0] == self.sequence

    @property
    def tail_sequence(self) -> int:
        return self._tail[0]

    def used(self) -> int:
        """Octets of the ring held by records since the checkpoint."""
        sequence, tail = self._tail
        if sequence == self.sequence:
            return 0
        return self.head - tail if self.head > tail else self.size - tail + self.head - START

    def append(self, records: Sequence[tuple[str, Sequence[bytes]]]) -> bool:
        """Write ``records`` (a maildir name and the file's parts, each) and make them
        durable; False, with nothing written, when the ring has no room for them. After an
        OSError the journal's state is unknown: its caller stops using it."""
        spans = []
        for name, parts in records:
            encoded = name.encode(errors="surrogateescape")
            length = len(encoded) + sum(len(part) for part in parts)
            spans.append((encoded, parts, length, _aligned(_RECORD.size + length + _CRC.size)))
        tail_sequence, tail = self._tail
        empty = tail_sequence == self.sequence
        places = self._place([span for *_, span in spans], None if empty else tail)
        if places is None:
            return False
        runs: list[tuple[int, int, list[bytes | memoryview]]] = []  # offset, length, parts
        sequence = self.sequence
        for (encoded, parts, length, span), offset in zip(spans, places, strict=True):
            header = _RECORD.pack(_RECORD_MAGIC, len(encoded), self.salt, sequence, length)
            crc = zlib.crc32(encoded, zlib.crc32(header))
            for part in parts:
                crc = zlib.crc32(part, crc)
            buffers: list[bytes | memoryview] = [header, encoded, *parts, _CRC.pack(crc)]
            pad = span - _RECORD.size - length - _CRC.size
            if pad:
                buffers.append(memoryview(_ZEROS)[:pad])
            if runs and runs[-1][0] + runs[-1][1] == offset:
                runs[-1] = (runs[-1][0], runs[-1][1] + span, runs[-1][2] + buffers)
            else:
                runs.append((offset, span, buffers))
            sequence += 1
        for offset, _, buffers in runs:
            _write_all(self.fd, buffers, offset)
        os.fdatasync(self.fd)
        if empty:  # the ring started again: its tail is the first record (same sequence)
            self._tail = (tail_sequence, places[0])
        self.head = places[-1] + spans[-1][3]
        self.sequence = sequence
        self.appended += len(records)
        return True

    def _place(self, spans: list[int], tail: int | None) -> list[int] | None:
        """Where each record goes (``tail``: where the oldest record kept starts, None
        when none is), growing the file where it must; None when there is no room."""
        places: list[int] = []
        head = START if tail is None else self.head
        for span in spans:
            if span > self.limit - START:
                return None
            if tail is not None and head <= tail:  # wrapped: free from head to tail
                if head + span > tail:
                    return None
            elif head + span > self.size:
                if head + span <= self.limit and self._grow(head + span):
                    pass
                elif tail is not None and START + span <= tail:
                    head = START
                else:
                    return None
            places.append(head)
            if tail is None:
                tail = head
            head += span
        return places

    def _grow(self, needed: int) -> bool:
        """The file grown, zero-filled, to hold ``needed`` octets (doubling); False when
        the filesystem has no room: the journal then keeps the size it has (the ring
        wraps, or a group takes the files' path)."""
        size = min(self.limit, max(needed, self.size * 2))
        try:
            _zero(self.fd, self.size, size)
        except OSError as err:
            log.warning(
                "spool journal %s stays at %d octets, it cannot grow: %s", self.path, self.size, err
            )
            self.limit = self.size
            return False
        self.size = size
        return True

    def mark(self) -> tuple[int, int]:
        """What a checkpoint taken now frees: every record before it."""
        return self.sequence, START if self.empty else self.head

    def checkpoint(self, mark: tuple[int, int]) -> None:
        """Record that every record before ``mark`` is durable as a file, which frees
        their space. The header slots are written in turn: a torn write leaves the
        other, an older checkpoint (more records replayed, none lost)."""
        self.generation += 1
        sequence, offset = mark
        state = Checkpoint(self.generation, self.salt, sequence, offset)
        os.pwrite(self.fd, _header(state), (self.generation % SLOTS) * BLOCK)
        os.fdatasync(self.fd)
        self._tail = mark
        self.checkpoints += 1

    def renew(self) -> None:
        """A new salt from the next record on, in an empty ring: records a crash left
        behind, torn or not, can then never be taken for later ones (a torn header slot
        leaves the other, with the old salt and an older checkpoint: still right)."""
        assert self.empty
        self.salt = int.from_bytes(os.urandom(8), "little")
        self.checkpoint(self.mark())

    def close(self) -> None:
        """Close the file (its lock goes with it); again does nothing."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


# -- the file's format -------------------------------------------------------------------


def _header(state: Checkpoint) -> bytes:
    packed = _HEADER.pack(
        _HEADER_MAGIC, 1, state.generation, state.salt, state.sequence, state.offset
    )
    return packed + _CRC.pack(zlib.crc32(packed))


def _last_checkpoint(fd: int) -> Checkpoint | None:
    """The header slot with the highest generation and a good checksum."""
    best = None
    for slot in range(SLOTS):
        raw = os.pread(fd, _HEADER.size + _CRC.size, slot * BLOCK)
        if len(raw) < _HEADER.size + _CRC.size:
            continue
        packed, (crc,) = raw[: _HEADER.size], _CRC.unpack(raw[_HEADER.size :])
        if zlib.crc32(packed) != crc:
            continue
        magic, version, generation, salt, sequence, offset = _HEADER.unpack(packed)
        if magic != _HEADER_MAGIC or version != 1:
            continue
        if best is None or generation > best.generation:
            best = Checkpoint(generation, salt, sequence, offset)
    return best


def _record_at(fd: int, salt: int, sequence: int, offset: int) -> tuple[Record, int] | None:
    """The record ``sequence`` at ``offset`` if it is there, whole, and this file's; with
    the offset after it."""
    raw = os.pread(fd, _RECORD.size, offset)
    if len(raw) < _RECORD.size:
        return None
    magic, name_length, its_salt, its_sequence, length = _RECORD.unpack(raw)
    if magic != _RECORD_MAGIC or its_salt != salt or its_sequence != sequence:
        return None
    if name_length > length:
        return None
    body = os.pread(fd, length + _CRC.size, offset + _RECORD.size)
    if len(body) < length + _CRC.size:
        return None
    (crc,) = _CRC.unpack(body[length:])
    if zlib.crc32(body[:length], zlib.crc32(raw)) != crc:
        return None
    name = body[:name_length].decode(errors="surrogateescape")
    record = Record(sequence, name, body[name_length:length])
    return record, offset + _aligned(_RECORD.size + length + _CRC.size)


def _walk(fd: int, salt: int, sequence: int, offset: int) -> Iterator[tuple[Record, int]]:
    """The records from ``sequence`` on, each where the one before ended or else where
    the ring starts (a wrap); with the offset after each."""
    while True:
        found = _record_at(fd, salt, sequence, offset)
        if found is None and offset != START:
            found = _record_at(fd, salt, sequence, START)
        if found is None:
            return
        yield found
        sequence, offset = sequence + 1, found[1]


def _write_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
    for start in range(0, len(buffers), _IOV_MAX):
        chunk = buffers[start : start + _IOV_MAX]
        total = sum(len(b) for b in chunk)
        written = os.pwritev(fd, chunk, offset)
        if written < total:  # a short write: the rest at once
            rest = memoryview(b"".join(chunk))[written:]
            while rest:
                done = os.pwrite(fd, rest, offset + written)
                rest, written = rest[done:], written + done
        offset += total


def _zero(fd: int, start: int, end: int) -> None:
    """Write zeros over [start, end): blocks allocated and written, so that later
    overwrites need no metadata commit (``fallocate`` would leave them unwritten)."""
    chunk = bytes(1 << 20)
    while start < end:
        start += os.pwrite(fd, memoryview(chunk)[: min(len(chunk), end - start)], start)


def _sync_folder(path: pathlib.Path) -> None:
    # delivery.fsync_path's twin: this module imports none of the receiver's own.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
