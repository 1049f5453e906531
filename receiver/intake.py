"""From DATA to a message, in bounded memory: the client's DATA read in blocks
(``data.DataReader``); its header section through the header firewall and the trace
headers as soon as it ends (``headers``); the body kept in memory up to
``spill.THRESHOLD`` octets, and past that written on, off the event loop, into a file the
delivery provides (for a maildir spool, the message's own file in tmp/). A session holds
at most the threshold, its header section and one read, whatever the message's size."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from . import data, delivery, headers, policy, replies, spill
from .replies import Reply

log = logging.getLogger(__name__)
READ_SIZE = 65536


class Intake:
    """One message's DATA on its way to ``target``."""

    def __init__(
        self,
        state: policy.Session,
        limit: int | None,
        target: delivery.Delivery,
        mail_from: str,
        recipients: tuple[str, ...],
        mail_options: tuple[str, ...] = (),
        rcpt_options: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        self.state, self.target = state, target
        self.mail_from, self.recipients = mail_from, recipients
        self.mail_options, self.rcpt_options = mail_options, rcpt_options
        self.trace_size = 0
        self.queue_id = delivery.new_queue_id()
        self.reader = data.DataReader(limit, self._content)
        self.header = headers.HeaderReader(state.connector.limits.max_header_size)
        self.head = b""  # trace headers, the fields the firewall kept, the empty line
        self.body = bytearray()  # what is not in the spill file (yet)
        self.spilled: spill.Spill | None = None
        self.problem: Reply | None = None  # the header's refusal, or a spill that failed
        self._handed = False

    @property
    def refusal(self) -> Reply | None:
        """Why the message is refused, once DATA has ended."""
        return self.reader.fault or self.problem

    async def receive(
        self, stream: asyncio.StreamReader, progress: Callable[[], None]
    ) -> bytes | None:
        """Read DATA to its end marker: the bytes after it (the client's next commands),
        or None when the client went away first. ``progress`` is called for each block."""
        try:
            while True:
                chunk = await stream.read(READ_SIZE)
                if not chunk:
                    self.discard()
                    return None
                rest = self.reader.feed(chunk)
                if rest is not None:
                    break
                progress()
                if len(self.body) >= spill.THRESHOLD and self.refusal is None:
                    await self._spill(final=False)
            if not self.header.done and self.refusal is None:
                self._header_ended()  # the message was all header, without an empty line
            if self.refusal is not None:
                self.discard()
            elif self.spilled is not None:
                await self._spill(final=True)
            return rest
        except BaseException:
            self.discard()
            raise

    def message(self) -> delivery.Message:
        """The accepted message; its spill file, if any, is the delivery's from now on."""
        self._handed = True
        return delivery.Message(
            queue_id=self.queue_id,
            connector=self.state.connector.name,
            mail_from=self.mail_from,
            recipients=self.recipients,
            content=b"" if self.spilled is not None else self.head + self.body,
            spilled=self.spilled,
            mail_options=self.mail_options,
            rcpt_options=self.rcpt_options,
            trace_size=self.trace_size,
        )

    def discard(self) -> None:
        """Forget the message (unless it was handed on); its spill file goes too."""
        self.reader.sink = _nowhere  # it was this object's: no cycle left to outlive it
        self.body = bytearray()  # a message handed on has its own copy
        if self._handed:
            return
        spilled, self.spilled = self.spilled, None
        if spilled is not None:
            spill.writers().submit(spilled.discard)  # after any write in flight

    def _content(self, lines: bytes) -> None:
        if self.problem is not None:
            return
        if not self.header.done:
            body = self.header.feed(lines)
            if body is None:
                return
            self._header_ended()
            if self.problem is not None:
                return
            lines = body
        self.body += lines

    def _header_ended(self) -> None:
        state = self.state
        self.problem = policy.message(state, self.header.size, self.header.hops)
        if self.problem is None:
            rights = state.rights
            trace = headers.trace(
                helo=state.helo,
                remote=str(state.remote),
                via=state.via,
                fqdn=state.connector.fqdn,
                connector=state.connector.name,
                principal=state.user or min(state.principals),
                tls=state.tls,
                authenticated=state.user is not None,
                rights=rights,
                queue_id=self.queue_id,
            )
            kept = headers.firewall(self.header.fields, rights)
            self.trace_size = sum(map(len, trace))
            self.head = b"".join(trace) + b"".join(kept) + b"\r\n"
        self.header.fields = []

    async def _spill(self, final: bool) -> None:
        """The body so far on into the spill file (made on first use); when ``final``, the
        file's data synced too."""
        loop = asyncio.get_running_loop()
        writers = spill.writers()
        try:
            parts: list[bytes | bytearray] = []
            if self.spilled is None:
                self.spilled = await loop.run_in_executor(
                    writers,
                    self.target.spill,
                    self.queue_id,
                    self.mail_from,
                    self.recipients,
                    self.mail_options,
                    self.rcpt_options,
                )
                parts.append(self.head)
            parts.append(self.body)
            self.body = bytearray()
            await loop.run_in_executor(writers, self.spilled.write, *parts)
            if final:
                await loop.run_in_executor(writers, self.spilled.sync)
        except OSError as err:
            log.warning("message %s: cannot spill to a file: %s", self.queue_id, err)
            self.problem = replies.DELIVERY_DEFERRED
            self.discard()


def _nowhere(lines: bytes) -> None:
    """Where a discarded message's data goes."""
