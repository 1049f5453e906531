"""The floor: the least a Python SMTP server on uvloop can do per message with the
receiver's durability, for bench/receiver_throughput.py's ``--with-floor``.

    python bench/floor_server.py PORT SPOOL

One ``asyncio.Protocol`` per connection, no policy, no header work, no logging: a banner,
250 to HELO/EHLO/MAIL/RCPT, 354 to DATA, and at the end of the data the message made
durable exactly as the receiver's spool makes a lone message durable (written into tmp/,
``sync_file_range`` waiting for the write, renamed into new/, new/ fsynced) before the 250.
It commits one message at a time on the event loop, so with many sessions it is no bound
at all (the receiver commits groups); with one session its rate is what no Python receiver
with this durability can beat on the machine, whatever it leaves out. It is a reference for
the benchmark, never a server for mail."""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import sys
import time

import uvloop

SYNC_ALL = 1 | 2 | 4  # sync_file_range: wait before, write, wait after
END = b"\r\n.\r\n"
REPLIES = {
    b"HELO": b"250 floor.example\r\n",
    b"EHLO": b"250 floor.example\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
}


class Spool:
    def __init__(self, root: str) -> None:
        self.root = root
        for folder in ("tmp", "new"):
            os.makedirs(os.path.join(root, folder), exist_ok=True)
        self.new = os.open(os.path.join(root, "new"), os.O_RDONLY | os.O_DIRECTORY)
        libc = ctypes.CDLL(None, use_errno=True)
        self.sync_file_range = libc.sync_file_range
        self.sync_file_range.argtypes = (
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_uint,
        )
        self.names = itertools.count()

    def commit(self, message: bytes) -> None:
        name = f"{time.time_ns()}.{next(self.names)}"
        tmp, final = f"{self.root}/tmp/{name}", f"{self.root}/new/{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, message)
            if self.sync_file_range(fd, 0, 0, SYNC_ALL) != 0:
                raise OSError(ctypes.get_errno(), "sync_file_range")
        finally:
            os.close(fd)
        os.rename(tmp, final)
        os.fsync(self.new)


class Session(asyncio.Protocol):
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.buffer = b""
        self.data: bytearray | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(b"220 floor.example ESMTP\r\n")

    def data_received(self, chunk: bytes) -> None:
        assert self.transport is not None
        if self.data is not None:
            self.data += chunk
            end = self.data.find(END)
            if end < 0:
                return
            message = bytes(self.data[: end + 2]).replace(b"\r\n..", b"\r\n.")[2:]
            chunk, self.data = bytes(self.data[end + len(END) :]), None
            self.spool.commit(message)
            self.transport.write(b"250 2.6.0 Queued\r\n")
        self.buffer += chunk
        while (end := self.buffer.find(b"\r\n")) >= 0:
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            verb = line[:4].upper()
            if verb == b"DATA":
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                # A CRLF before the data, so that an empty message ends at its first ".".
                rest, self.buffer, self.data = self.buffer, b"", bytearray(b"\r\n")
                if rest:
                    self.data_received(rest)
                return
            if verb == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                return
            self.transport.write(REPLIES.get(verb, b"502 5.5.2 Not here\r\n"))


async def serve(port: int, root: str) -> None:
    spool = Spool(root)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Session(spool), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(int(sys.argv[1]), sys.argv[2]))
