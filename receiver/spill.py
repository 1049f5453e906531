"""A message's bytes past what a session keeps in memory: a file, written off the event
loop. For a maildir spool it is the message file itself, in the spool's tmp/; for a relay,
an anonymous temporary file that the relay reads back to the next hop."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import pathlib
import tempfile
import threading
from collections.abc import Iterable, Iterator

from . import workers

# Past this many octets of body a message goes on to a file; a session holds at most this,
# its header section (the connector's header limit) and one read of the socket.
THRESHOLD = 256 << 10


class Spill:
    """An open file holding a message from ``start`` on (before it: the maildir envelope
    line). ``path`` is its name in the spool's tmp/ and ``name`` its name in new/
    (maildir), or None and "" (an anonymous file). Writes, syncs and ``discard`` are
    serialised, so a discard sent while a write runs waits for it."""

    def __init__(self, fd: int, path: pathlib.Path | None = None, name: str = "") -> None:
        self.fd, self.path, self.name = fd, path, name
        self.start = 0
        self.size = 0  # octets of the message written
        self._lock = threading.Lock()

    def write(self, *parts: bytes | bytearray, message: bool = True) -> None:
        with self._lock:
            for part in parts:
                view = memoryview(part)
                while view and self.fd >= 0:
                    view = view[os.write(self.fd, view) :]
                if message:
                    self.size += len(part)
                else:
                    self.start += len(part)

    def sync(self) -> None:
        """Its data on stable storage (before the maildir commit, so that a big message
        does not lengthen the commit of the small ones that share its group). A spool
        file's pages then leave the page cache, which counts against the pod's memory
        limit; an anonymous file is read back to the next hop and keeps them."""
        with self._lock:
            if self.fd >= 0:
                os.fdatasync(self.fd)
                if self.path is not None:
                    os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def detach(self) -> int:
        """The open file, now the caller's to close."""
        with self._lock:
            fd, self.fd = self.fd, -1
            return fd

    def discard(self) -> None:
        """Close it and remove its name."""
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            if self.path is not None:
                with contextlib.suppress(OSError):
                    self.path.unlink()
                self.path = None

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The message, read back from ``start``."""
        offset = self.start
        while chunk := os.pread(self.fd, size, offset):
            yield chunk
            offset += len(chunk)


def anonymous(directory: str | None = None) -> Spill:
    """A file with no name (in ``directory``, else the temporary folder): nothing of it
    outlives the process."""
    fd, path = tempfile.mkstemp(prefix="smtpgate-", dir=directory)
    os.unlink(path)
    return Spill(fd)


def stuffed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Message content (CRLF line endings) dot-stuffed for DATA, chunk by chunk."""
    at_line_start = True
    for chunk in chunks:
        if not chunk:
            continue
        out = chunk.replace(b"\n.", b"\n..")
        yield b"." + out if at_line_start and chunk[:1] == b"." else out
        at_line_start = chunk[-1:] == b"\n"


@functools.cache
def writers() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that write spill files (never the event loop: a write may wait for the
    disk)."""
    return concurrent.futures.ThreadPoolExecutor(4, "spill", initializer=workers.free_thread)
