"""Exchange's receive protocol log: CSV lines of date-time, connector-id, session-id,
sequence-number, local-endpoint, remote-endpoint, event, data, context.

Events: ``+`` connect, ``-`` disconnect, ``>`` sent to the client, ``<`` received from the
client, ``*`` information. AUTH payloads and passwords are never written. Control
characters are written escaped (``\x1b``, a backslash as ``\\``), here and on stderr
(``EscapingFormatter``): one line per event, nothing a terminal would act on."""

from __future__ import annotations

import collections
import csv
import datetime as dt
import io
import logging
import logging.handlers
import re
import sys
import threading
import time
from typing import Any, TextIO

from . import health, workers

FIELDS = (
    "date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,"
    "event,data,context"
)
_AUTH = re.compile(r"^((?:AUTH|X-EXPS)\s+\S+)(\s+.*)?$", re.IGNORECASE)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def _escaped(match: re.Match[str]) -> str:
    char = match[0]
    return "\\\\" if char == "\\" else f"\\x{ord(char):02x}"


def escape(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1) and backslashes escaped."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escaped, text)


class EscapingFormatter(logging.Formatter):
    """Log lines with control characters escaped: a message stays on one line, and a
    traceback keeps its line breaks and nothing else."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        text = super().formatException(ei)
        return "\n".join(escape(line) for line in text.split("\n"))


def redact(line: str) -> str:
    """A client line as it may be logged: an AUTH or X-EXPS initial response becomes ``****``."""
    match = _AUTH.match(line)
    if match and match.group(2):
        return f"{match.group(1)} ****"
    return line


def header(now: dt.datetime) -> str:
    return (
        "#Software: smtpgate\n#Version: 15.0.0.0\n#Log-type: SMTP Receive Protocol Log\n"
        f"#Date: {now.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z\n#Fields: {FIELDS}\n"
    )


class ProtocolLog:
    """Writes protocol log lines to a stream or to size-rotated files, on a thread of its
    own: ``write`` only stamps the event and queues it, so a slow reader of the log (a
    stdout nobody drains, a full disk) never holds the event loop. When ``queue_size``
    events wait already, the new one is dropped and counted in
    ``smtpgate_protocol_log_dropped_total``. The thread takes what is queued every
    ``interval`` seconds (not an event at a time: a wake-up per event would cost the
    event loop more than the writing saves it)."""

    def __init__(
        self,
        destination: str = "-",
        max_bytes: int = 10 << 20,
        backups: int = 10,
        stream: TextIO | None = None,
        queue_size: int = 8192,
        interval: float = 0.05,
    ) -> None:
        self._stream: TextIO | None = None
        self._handler: logging.handlers.RotatingFileHandler | None = None
        if stream is None and destination != "-":
            self._handler = logging.handlers.RotatingFileHandler(
                destination, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
            self._handler.setFormatter(logging.Formatter("%(message)s"))
            if self._handler.stream.tell() == 0:
                self._handler.stream.write(header(dt.datetime.now(dt.UTC)))
        else:
            self._stream = stream or sys.stdout
            self._stream.write(header(dt.datetime.now(dt.UTC)))
            self._stream.flush()
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._queue_size, self._interval = queue_size, interval
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._drain, name="protocol-log", daemon=True)
        self._writer.start()

    def write(
        self,
        connector: str,
        session: str,
        sequence: int,
        local: str,
        remote: str,
        event: str,
        data: str = "",
        context: str = "",
    ) -> None:
        if len(self._queue) >= self._queue_size:
            health.PROTOCOL_LOG_DROPPED.inc()
            return
        self._queue.append(
            (
                time.time(),
                connector,
                session,
                sequence,
                local,
                remote,
                event,
                data,
                context,
            )
        )

    def close(self, timeout: float = 5) -> None:
        """Write what is queued (waiting at most ``timeout`` for a stuck destination)."""
        self._stop.set()
        self._writer.join(timeout)
        if self._handler is not None and not self._writer.is_alive():
            self._handler.close()

    def _drain(self) -> None:
        workers.free_thread()  # a pinned worker's helper runs on any of its CPUs
        while True:
            stop = self._stop.wait(self._interval)
            while self._queue:
                rows = [self._queue.popleft() for _ in range(min(512, len(self._queue)))]
                lines = [_format(row) for row in rows]
                try:
                    self._emit(lines)
                except (OSError, ValueError):  # a closed or broken destination
                    health.PROTOCOL_LOG_DROPPED.inc(len(lines))
            if stop:
                return

    def _emit(self, lines: list[str]) -> None:
        if self._stream is not None:
            self._stream.write("".join(line + "\n" for line in lines))
            self._stream.flush()
        elif self._handler is not None:
            for line in lines:
                record = logging.LogRecord("protocol", logging.INFO, "", 0, line, None, None)
                self._handler.emit(record)


def _format(row: tuple[Any, ...]) -> str:
    """One CSV line: the event's time, the fields, data and context escaped."""
    stamp, *fields, data, context = row
    when = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([when, *fields, escape(data), escape(context)])
    return buffer.getvalue()


class SessionLog:
    """One session's view of the protocol log (keeps the sequence number)."""

    def __init__(
        self, log: ProtocolLog | None, connector: str, session: str, local: str, remote: str
    ) -> None:
        self.log, self.connector, self.session = log, connector, session
        self.local, self.remote, self.sequence = local, remote, 0

    def __call__(self, event: str, data: str = "", context: str = "") -> None:
        if self.log is None:
            return
        self.log.write(
            self.connector,
            self.session,
            self.sequence,
            self.local,
            self.remote,
            event,
            data,
            context,
        )
        self.sequence += 1
