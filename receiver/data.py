"""Reading DATA in blocks instead of lines, with the same rules: the message ends only at
CRLF.CRLF; a bare CR or LF, or a NUL, refuses the whole message; lines are at most 1000
octets; dot-stuffing is undone. Pure byte work, no I/O: the adapter feeds it chunks."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import replies
from .replies import Reply

END = b"\r\n.\r\n"
MAX_LINE = 1000  # octets including CRLF, RFC 5321 4.5.3.1.6 (and one for a stuffed dot)


@dataclass
class DataReader:
    """Collects one message's DATA. ``feed`` returns the bytes after the end marker (the
    client's next commands) once the end is seen, else None."""

    limit: int | None
    raw: bytearray = field(default_factory=bytearray)
    too_much: bool = False
    done: bool = False
    _seen: int = 0  # bytes of ``raw`` discarded after the limit

    def feed(self, chunk: bytes) -> bytes | None:
        start = max(0, len(self.raw) - 4)
        self.raw += chunk
        if not self._seen and self.raw.startswith(b".\r\n"):
            self.done = True
            rest = bytes(self.raw[3:])
            self.raw.clear()
            return rest
        at = self.raw.find(END, start)
        if at >= 0:
            self.done = True
            rest = bytes(self.raw[at + len(END) :])
            del self.raw[at + 2 :]
            if self.limit is not None and len(self.raw) + self._seen > self.limit:
                self.too_much = True
                self.raw.clear()
            return rest
        if self.limit is not None and len(self.raw) + self._seen > self.limit + len(END):
            # Over the limit: keep reading to the end marker, holding only its width.
            self.too_much = True
            self._seen += len(self.raw) - 4
            del self.raw[:-4]
        return None

    def result(self) -> tuple[bytes | None, Reply | None]:
        """The unstuffed message, or the reply that refuses it."""
        if self.too_much:
            return None, replies.DATA_TOO_MUCH
        raw = bytes(self.raw)
        lines = raw.split(b"\r\n")
        if max(map(len, lines), default=0) + 2 > MAX_LINE + 1:
            return None, replies.DATA_LINE_TOO_LONG
        if b"\x00" in raw:
            return None, replies.NUL_IN_DATA
        bare = raw.replace(b"\r\n", b"")
        if b"\r" in bare or b"\n" in bare:
            return None, replies.BARE_LINE_ENDING_DATA
        content = raw.replace(b"\r\n.", b"\r\n")
        if content.startswith(b"."):
            content = content[1:]
        return content, None
