"""Reading DATA in blocks instead of lines, with the same rules: the message ends only at
CRLF.CRLF; a bare CR or LF, or a NUL, refuses the whole message; lines are at most 1000
octets; dot-stuffing is undone. Pure byte work, no I/O: the adapter feeds it chunks, and
the unstuffed message comes out as it arrives, in whole lines, to a sink; nothing of it
is held here but the line in progress."""

from __future__ import annotations

from collections.abc import Callable

from . import replies
from .replies import Reply

END = b"\r\n.\r\n"
MAX_LINE = 1000  # octets including CRLF, RFC 5321 4.5.3.1.6 (and one for a stuffed dot)


class DataReader:
    """Reads one message's DATA. ``feed`` returns the bytes after the end marker (the
    client's next commands) once the end is seen, else None. While nothing is wrong with
    the message, its unstuffed content goes to ``sink`` in whole lines (to ``content``
    when no sink is given); once something is, nothing more does, and ``fault`` says
    what refuses it."""

    def __init__(self, limit: int | None, sink: Callable[[bytes], None] | None = None) -> None:
        self.limit = limit
        self.content = bytearray()
        self.sink = sink or self.content.extend
        self.size = 0  # octets of the message as sent (dot-stuffed), end marker excluded
        self.done = False
        self.too_much = self.line_too_long = self.nul = self.bare = False
        self._tail = b""  # the last octets seen, held back: they may begin the end marker
        self._start = True  # nothing of the message decided yet (".\r\n" ends it at once)
        self._partial = b""  # the line in progress

    @property
    def fault(self) -> Reply | None:
        """What refuses the message (the first of: size, line length, NUL, bare CR or LF)."""
        if self.too_much:
            return replies.DATA_TOO_MUCH
        if self.line_too_long:
            return replies.DATA_LINE_TOO_LONG
        if self.nul:
            return replies.NUL_IN_DATA
        if self.bare:
            return replies.BARE_LINE_ENDING_DATA
        return None

    def feed(self, chunk: bytes) -> bytes | None:
        data = self._tail + chunk if self._tail else chunk
        if self._start:
            if len(data) < 3 and b".\r\n".startswith(data):
                self._tail = data
                return None
            self._start = False
            if data.startswith(b".\r\n"):
                self.done = True
                return data[3:]
        # The end marker holds a dot: where the data has none (base64, most bodies), a
        # memchr-speed look rules it out; else the marker starts 2 octets before a dot.
        dot = data.find(b".")
        at = -1 if dot < 0 else data.find(END, max(dot - 2, 0))
        if at >= 0:
            self.done = True
            self._take(data[: at + 2])
            return data[at + len(END) :]
        self._tail = data[-4:]
        self._take(data[:-4])
        return None

    def result(self) -> tuple[bytes | None, Reply | None]:
        """The unstuffed message collected in ``content`` (no sink given), or the reply
        that refuses it."""
        fault = self.fault
        return (None, fault) if fault is not None else (bytes(self.content), None)

    def _take(self, raw: bytes) -> None:
        """Octets of the message, in order: counted, checked, and (in whole lines,
        unstuffed) passed on while nothing is wrong."""
        if not raw:
            return
        self.size += len(raw)
        if self.limit is not None and self.size > self.limit:
            self.too_much = True
        if self.too_much or self.line_too_long:
            return  # refused whatever follows: only the end marker matters now
        buffer = self._partial + raw if self._partial else raw
        cut = buffer.rfind(b"\r\n") + 2
        if cut == 1:  # no line ends here
            lines, self._partial = b"", buffer
        else:
            lines, self._partial = buffer[:cut], buffer[cut:]
        if len(self._partial) > MAX_LINE:
            self.line_too_long = True
            return
        if not lines:
            return
        if _longer_line(lines, MAX_LINE + 1):
            self.line_too_long = True
            return
        if b"\x00" in lines:
            self.nul = True
        # Without its CRLFs, a CR or LF left is a bare one (one pass, where counting CRLF,
        # CR and LF apart took three).
        text = b"".join(lines.split(b"\r\n"))
        if b"\r" in text or b"\n" in text:
            self.bare = True
        if self.nul or self.bare:
            return  # still checked for longer lines, which take precedence
        if b"." not in lines:  # nothing dot-stuffed (memchr-speed, where replace is not)
            self.sink(lines)
            return
        content = lines.replace(b"\r\n.", b"\r\n")
        self.sink(content[1:] if content[:1] == b"." else content)


def _longer_line(lines: bytes, limit: int) -> bool:
    """True when one of ``lines`` (CRLF-terminated, as ``split(b"\\r\\n")`` cuts them) is
    longer than ``limit`` octets with its CRLF. From the start of a line, the last CRLF
    that ends within ``limit`` octets starts the next line to look at; none there means
    the line is longer. One search per ``limit`` octets rather than an object per line."""
    start, end = 0, len(lines)
    while end - start > limit:
        crlf = lines.rfind(b"\r\n", start, start + limit)
        if crlf < 0:
            return True
        start = crlf + 2
    return False
