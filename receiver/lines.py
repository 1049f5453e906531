"""Command lines as the receiver reads them: CRLF-terminated, no other CR, no control
characters, at most 512 octets (RFC 5321 4.5.3.1.4) plus what extensions add; anything
else is refused whole before aiosmtpd's engine parses it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from . import replies
from .replies import Reply

COMMAND_LIMIT = 512  # octets including CRLF, RFC 5321 4.5.3.1.4
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class RefusedLine(Exception):
    """A command line refused before the engine parses it; ``reply`` says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class CommandReader(asyncio.StreamReader):
    """The session's StreamReader, which reads command lines as the receiver takes them:
    each must end in CRLF, hold no other CR and no control character, and fit in 512
    octets (more for MAIL and RCPT where an extension says so, ``allowances``). A line
    longer than the buffer is read to its end and thrown away whole, so nothing of it is
    read as a command. (DATA is read in blocks by ``data.DataReader``, with ``read``.)
    ``on_command`` sees every command line read (the protocol log)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.on_command: Any = None
        self.allowances: dict[bytes, int] = {}

    def allow(self, allowances: dict[bytes, int]) -> None:
        """Octets beyond 512 per command (``b"MAIL"``), as the EHLO reply offered. An AUTH
        allowance (a GSSAPI or NTLM initial response) also lets the reader hold such a line
        (its buffer stays bounded by it)."""
        self.allowances = allowances
        auth = allowances.get(b"AUTH", 0)
        if auth:
            self._limit = max(self._limit, COMMAND_LIMIT + auth + 2)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """The next command line (up to LF, whatever ``separator`` says), or RefusedLine.
        A line already in the buffer, or one that arrives, is taken here; a line over the
        limit, the end of input and a failed stream go the StreamReader's way."""
        buffer, line = self._buffer, None
        while self._exception is None:
            end = buffer.find(b"\n")
            if 0 <= end <= self._limit:
                line = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                if self._paused:
                    self._maybe_resume_transport()
                break
            if end >= 0 or self._eof or len(buffer) > self._limit:
                break  # too long, or the end of the input: the StreamReader's way
            waiter = self._data_waiter()  # raises, as asyncio's, before it waits
            try:
                await waiter
            finally:
                self._waiter = None
        if line is None:
            try:
                line = await super().readuntil(b"\n")
            except asyncio.LimitOverrunError:
                await self._discard_line()
                raise RefusedLine(replies.COMMAND_TOO_LONG) from None
        if self.on_command is not None:
            self.on_command(line)
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise RefusedLine(replies.BARE_LINE_ENDING_COMMAND)
        if len(line) > COMMAND_LIMIT and len(line) > COMMAND_LIMIT + self.allowances.get(
            line[:4].upper(), 0
        ):
            raise RefusedLine(replies.COMMAND_TOO_LONG)
        if _CONTROL.search(line, 0, len(line) - 2) is not None:
            raise RefusedLine(replies.CONTROL_IN_COMMAND)
        return line

    async def read(self, n: int = -1) -> bytes:
        """StreamReader's ``read`` (DATA's blocks), waiting for data itself."""
        if n <= 0 or self._exception is not None:
            return await super().read(n)
        if not self._buffer and not self._eof:
            waiter = self._data_waiter()
            try:
                await waiter
            finally:
                self._waiter = None
        data = bytes(memoryview(self._buffer)[:n])
        del self._buffer[:n]
        self._maybe_resume_transport()
        return data

    def _data_waiter(self) -> asyncio.Future[None]:
        """What StreamReader's ``_wait_for_data`` awaits, for a read to await itself (a
        coroutine less per read); the read clears ``_waiter`` once it is done."""
        if self._waiter is not None:
            raise RuntimeError("a read while another read is waiting")
        if self._paused:  # waiting while paused would wait for ever
            self._paused = False
            self._transport.resume_reading()
        self._waiter = self._loop.create_future()
        return self._waiter

    def feed_data(self, data: bytes) -> None:
        """StreamReader's, with its waiter woken here."""
        assert not self._eof, "feed_data after feed_eof"
        if not data:
            return
        buffer = self._buffer
        buffer.extend(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.cancelled():
                waiter.set_result(None)
        if self._transport is not None and not self._paused and len(buffer) > 2 * self._limit:
            try:
                self._transport.pause_reading()
            except NotImplementedError:
                self._transport = None  # it cannot pause: everything is buffered
            else:
                self._paused = True

    async def readline(self) -> bytes:
        """An AUTH response line (never logged): up to the reader's limit, or refused."""
        try:
            return await super().readuntil(b"\n")
        except asyncio.IncompleteReadError as error:
            return error.partial
        except asyncio.LimitOverrunError:
            await self._discard_line()
            raise RefusedLine(replies.COMMAND_TOO_LONG) from None

    async def _discard_line(self) -> None:
        """Read up to and including the next LF, holding no more than the buffer's limit."""
        while True:
            try:
                await super().readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as error:
                await self.read(error.consumed)
