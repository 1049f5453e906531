"""A queued message read back from the spool, and its delivery record.

A message is complete and durable exactly when a file of ``new/`` or ``cur/`` holds it
under a name that does not begin with ``.``; everything else (``tmp/``, dot-names) is a
message still being written and is never read. Its first line is the envelope
(``delivery.MaildirDelivery``), the rest the message as the next hop gets it.

The record (``state/<name>``) says which recipients are settled: ``delivered`` (the next
hop took it) or ``bounced`` (refused or expired, and the sender told). Each line is on
stable storage before the message goes on, so a recipient that has the message is not
sent it again after a crash. The last temporary failure per recipient is noted there too,
and when the next try is due (without a sync: they only word the expiry notice and keep the
other workers from trying the message before its backoff is over). A message whose
recipients are all settled is removed, then its record."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from . import delivery, spill

MAX_ENVELOPE = 4 << 20  # the envelope line: many recipients, each up to 3 x 256 octets
ENVELOPE_READ = 64 << 10  # what a try reads first to find it

_FIELD = re.compile(r"(from|to|mail|rcpt)=([^;]*)(?:; |$)")
_ITEM = re.compile(r"<([^<>]*)>")
_XCHAR = re.compile(r"\+([0-9A-F]{2})")


class Unreadable(Exception):
    """A spool file without a readable envelope: kept aside, never deleted."""


def unxtext(text: str) -> str:
    """RFC 3461 xtext back to text (``delivery.xtext``'s inverse)."""
    raw = _XCHAR.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1").decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    recipients: tuple[str, ...]
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[tuple[str, ...], ...] = ()

    def option(self, index: int, name: str) -> str | None:
        """A recipient's parameter (``NOTIFY``), as given."""
        prefix = name.upper() + "="
        for option in self.rcpt_options[index] if self.rcpt_options else ():
            if option.upper().startswith(prefix):
                return option[len(prefix) :]
        return None

    def mail_option(self, name: str) -> str | None:
        prefix = name.upper() + "="
        found = [o[len(prefix) :] for o in self.mail_options if o.upper().startswith(prefix)]
        return found[0] if found else None


def parse(line: bytes) -> Envelope:
    """The ``X-Smtpgate-Envelope`` line (with or without its CRLF)."""
    text = line.decode("ascii", "replace").rstrip("\r\n")
    prefix = "X-Smtpgate-Envelope: "
    if not text.startswith(prefix):
        raise Unreadable("no envelope line")
    fields: dict[str, str] = {}
    rest = text[len(prefix) :]
    while rest:
        match = _FIELD.match(rest)
        if match is None:
            raise Unreadable(f"malformed envelope near {rest[:40]!r}")
        fields[match.group(1)] = match.group(2)
        rest = rest[match.end() :]
    if "from" not in fields or "to" not in fields:
        raise Unreadable("envelope without from or to")
    sender = _ITEM.fullmatch(fields["from"])
    if sender is None:
        raise Unreadable("malformed sender")
    recipients = tuple(unxtext(r) for r in _ITEM.findall(fields["to"]))
    mail = _ITEM.findall(fields.get("mail", ""))
    mail_options = tuple(unxtext(o) for o in mail[0].split()) if mail else ()
    rcpt_options: tuple[tuple[str, ...], ...] = ()
    if "rcpt" in fields:
        rcpt_options = tuple(
            tuple(unxtext(o) for o in item.split()) for item in _ITEM.findall(fields["rcpt"])
        )
        if len(rcpt_options) != len(recipients):
            raise Unreadable("recipient parameters do not match the recipients")
    return Envelope(unxtext(sender.group(1)), recipients, mail_options, rcpt_options)


@dataclass
class Record:
    """What the delivery record says: settled recipients (by index) and the last
    temporary failure of each unsettled one."""

    delivered: set[int] = field(default_factory=set)
    bounced: set[int] = field(default_factory=set)
    last_error: dict[int, str] = field(default_factory=dict)
    next_try: float = 0.0  # when the last try deferred it to (any worker's), epoch seconds

    @property
    def settled(self) -> set[int]:
        return self.delivered | self.bounced


class Queued:
    """One queued message, locked for this process (``flock``, so that the other worker
    processes, which share the spool, leave it alone; the lock goes with the process)."""

    def __init__(self, root: pathlib.Path, folder: str, name: str) -> None:
        self.root, self.folder, self.name = root, folder, name
        self.path = root / folder / name
        self.state_path = root / "state" / name
        self.fd = -1
        self.envelope = Envelope("", ())
        self.offset = 0
        self.size = 0
        self.arrived = 0.0
        self.record = Record()

    def open(self) -> bool:
        """Open and lock it: False when it is gone or another process has it."""
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            return False
        st = os.fstat(self.fd)
        if st.st_nlink == 0:  # delivered and removed between our open and our lock
            self.close()
            return False
        self.arrived = st.st_mtime
        # The envelope line, not the message: a small read first, the longest line only
        # for a message with very many recipients.
        head = os.pread(self.fd, min(ENVELOPE_READ, st.st_size), 0)
        end = head.find(b"\r\n")
        if end < 0 and len(head) < min(MAX_ENVELOPE, st.st_size):
            head = os.pread(self.fd, min(MAX_ENVELOPE, st.st_size), 0)
            end = head.find(b"\r\n")
        if end < 0:
            raise Unreadable("envelope line without an end")
        self.envelope = parse(head[:end])
        self.offset = end + 2
        self.size = st.st_size - self.offset
        self.record = self._read_record()
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # and the lock with it
            self.fd = -1

    def message(self, indexes: list[int]) -> delivery.Message:
        """The message for the recipients at ``indexes``, read from the file as it goes."""
        env = self.envelope
        content = spill.Spill(self.fd)
        content.start, content.size = self.offset, self.size
        return delivery.Message(
            queue_id=self.name,
            connector="",
            mail_from=env.mail_from,
            recipients=tuple(env.recipients[i] for i in indexes),
            content=b"",
            spilled=content,
            mail_options=env.mail_options,
            rcpt_options=tuple(env.rcpt_options[i] for i in indexes) if env.rcpt_options else (),
        )

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        offset = self.offset
        while chunk := os.pread(self.fd, size, offset):
            yield chunk
            offset += len(chunk)

    def note(self, lines: list[str], durable: bool) -> None:
        """Append to the delivery record (on stable storage when ``durable``)."""
        if not lines:
            return
        created = not self.state_path.exists()
        fd = os.open(self.state_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            data = "".join(line.replace("\n", " ") + "\n" for line in lines).encode()
            os.write(fd, data)
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if durable and created:
            delivery.fsync_path(self.state_path.parent)

    def remove(self) -> None:
        """Every recipient is settled: the message goes, then its record."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_path)

    def _read_record(self) -> Record:
        record = Record()
        try:
            text = self.state_path.read_text(errors="replace")
        except FileNotFoundError:
            return record
        # Only whole lines: one a crash cut short ("delivered 1" of "delivered 12") is not.
        for line in text.split("\n")[:-1]:
            what, _, rest = line.partition(" ")
            if what == "next":
                with contextlib.suppress(ValueError):
                    record.next_try = float(rest)
                continue
            index_text, _, detail = rest.partition(" ")
            if not index_text.isdigit():
                continue
            index = int(index_text)
            if what == "delivered":
                record.delivered.add(index)
            elif what == "bounced":
                record.bounced.add(index)
            elif what == "deferred":
                record.last_error[index] = detail
        return record


def names(root: pathlib.Path) -> list[tuple[str, str, float]]:
    """Every complete message of the spool: (folder, name, modification time)."""
    found = []
    for folder in ("new", "cur"):
        try:
            entries = list(os.scandir(root / folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # still being written (the contract with the spool's writer)
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file():
                    found.append((folder, entry.name, entry.stat().st_mtime))
    return found


def forget_orphans(root: pathlib.Path, present: set[str]) -> None:
    """Remove records whose message is gone (removed after its last recipient settled)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root / "state"):
            if entry.name not in present and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    if not any((root / f / entry.name).exists() for f in ("new", "cur")):
                        os.unlink(entry.path)


def write_message(root: pathlib.Path, name: str, parts: Iterable[bytes]) -> None:
    """A new message (its envelope line first) into the spool, durable before it is
    visible: written into tmp/, synced, renamed into new/, new/ synced (the notices the
    queue itself sends)."""
    tmp = root / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.rename(tmp, root / "new" / name)
    delivery.fsync_path(root / "new")
