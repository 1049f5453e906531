"""The floor: the least a Python SMTP server on uvloop can do per message with the
receiver's own spool, for bench/receiver_throughput.py's ``--with-floor``.

    python bench/floor_server.py PORT SPOOL [WORKERS]

One ``asyncio.Protocol`` per connection (no task per connection), no policy, no header
work, no logging, no timeouts: a banner, 250 to HELO/EHLO/MAIL/RCPT, 354 to DATA, and at
the end of the data the message handed to the receiver's ``MaildirDelivery`` (the same
journal, group commit and lone-message commit on the event loop, the same order of syncs)
and 250 once it returns.
WORKERS processes (the receiver's ``--workers auto``: one per CPU) share the port
(SO_REUSEPORT), as the receiver's do, and keep to a CPU each where the receiver's would
(``--cpu-affinity auto``). What the receiver spends beyond it is its session
path; what it spends is the least any Python receiver on this spool spends here. It is a
reference for the benchmark, never a server for mail."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import sys

import uvloop
from smtpgate.receiver import delivery, server
from smtpgate.receiver import workers as placing

END = b"\r\n.\r\n"
REPLIES = {
    b"HELO": b"250 floor.example\r\n",
    b"EHLO": b"250-floor.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
}


class Session(asyncio.Protocol):
    open: set[Session] = set()

    def __init__(self, spool: delivery.MaildirDelivery) -> None:
        self.spool = spool
        self.buffer = b""
        self.data: bytearray | None = None
        self.committing = False  # between the end of the data and its 250
        self.sender, self.recipients = "", ["postmaster@floor.example"]
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        Session.open.add(self)
        transport.write(b"220 floor.example ESMTP\r\n")  # type: ignore[attr-defined]

    def connection_lost(self, error: Exception | None) -> None:
        Session.open.discard(self)

    def data_received(self, chunk: bytes) -> None:
        if self.data is not None and not self.committing:
            self.data += chunk
            end = self.data.find(END)
            if end < 0:
                return
            content = bytes(self.data[: end + 2]).replace(b"\r\n..", b"\r\n.")[2:]
            self.buffer, self.data = bytes(self.data[end + len(END) :]), None
            message = delivery.Message(
                delivery.new_queue_id(), "floor", self.sender, tuple(self.recipients), content
            )
            self.committing = True
            asyncio.get_running_loop().create_task(self._commit(message))
            return
        self.buffer += chunk
        if not self.committing:
            self._commands()

    async def _commit(self, message: delivery.Message) -> None:
        assert self.transport is not None
        try:
            await self.spool.deliver(message)
            self.transport.write(b"250 2.6.0 Queued\r\n")
        except delivery.DeliveryError:
            self.transport.write(b"451 4.3.0 Not stored\r\n")
        finally:
            self.committing = False
        self._commands()

    def _commands(self) -> None:
        assert self.transport is not None
        while (end := self.buffer.find(b"\r\n")) >= 0:
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            verb = line[:4].upper()
            if verb == b"MAIL":
                self.sender, self.recipients = _path(line), []
            elif verb == b"RCPT":
                self.recipients.append(_path(line))
            elif verb == b"DATA":
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                # A CRLF before the data, so that an empty message ends at its first ".".
                rest, self.buffer, self.data = self.buffer, b"", bytearray(b"\r\n")
                if rest:
                    self.data_received(rest)
                return
            elif verb == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                return
            self.transport.write(REPLIES.get(verb, b"502 5.5.2 Not here\r\n"))


def _path(line: bytes) -> str:
    """The address between the angle brackets of a MAIL or RCPT line."""
    start = line.find(b"<") + 1
    return line[start : line.find(b">", start)].decode("latin-1")


async def serve(sock: socket.socket, root: str) -> None:
    spool = delivery.MaildirDelivery(root)
    # As the receiver sets it: a lone session commits on the loop, without the committer.
    spool.alone = lambda: len(Session.open) <= 1
    listener = await asyncio.get_running_loop().create_server(lambda: Session(spool), sock=sock)
    async with listener:
        await listener.serve_forever()


def main(port: int, root: str, workers: int) -> None:
    """The first worker is this process; the others are forked, and each ends with it."""
    # Each worker its own socket on the port, made as the receiver's workers make theirs.
    socks = [
        server._listening_socket("127.0.0.1", port, 4, reuse_port=True) for _ in range(workers)
    ]
    children = []
    plan = placing.plan(str(workers), "auto", sorted(os.sched_getaffinity(0)), placing.cpu_quota())

    def stop(signum: int, frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    for sock, cpu in zip(socks[1:], plan.cpus[1:], strict=True):
        placing.pin(cpu)  # the worker forked next keeps to it from its start
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _die_with_parent()
            uvloop.run(serve(sock, root))
            os._exit(0)
        children.append(pid)
    placing.pin(plan.cpus[0])
    print("ready", flush=True)
    uvloop.run(serve(socks[0], root))


def _die_with_parent() -> None:
    """SIGTERM when the first worker ends, however it ends (prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() == 1:  # the parent was gone before the call
        os._exit(0)


if __name__ == "__main__":
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else len(os.sched_getaffinity(0))
    main(int(sys.argv[1]), sys.argv[2], workers)
