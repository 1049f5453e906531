"""CPU per SMTP session in the receiver's Python code alone, without sockets or a spool.

    .venv/bin/python bench/session_cpu.py [--sessions 3000] [--size 1024] [--repeat 5]

Each session is one ``ConnectorSMTP`` (the Internet connector, as in
bench/receiver_throughput.py) on an in-memory transport: banner, EHLO, MAIL, RCPT, DATA
with a message of ``--size`` octets, QUIT, the client sending each command after the
previous reply as smtp-source does. The delivery takes each message at once, so what is
measured is the session's own work: parsing, policy, replies, the DATA reader and the
header firewall. The figure is process CPU time per session (best of ``--repeat``), which
a busy machine disturbs far less than a throughput run: it is for comparing two versions
of the receiver on the same machine (``--compare TREE`` runs another copy of the source,
as bench/receiver_throughput.py does), not for comparing with Postfix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Transport(asyncio.Transport):
    """Keeps what the server writes; the client side reads it back."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False
        self.protocol: asyncio.Protocol | None = None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("192.0.2.7", 40000), "sockname": ("127.0.0.1", 25)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class Accepting:
    """A delivery that takes every message at once (no spool)."""

    accepted = 0

    async def deliver(self, message: object) -> None:
        self.accepted += 1

    def withheld(self) -> frozenset[str]:
        return frozenset()

    def admit(self) -> None:
        return None

    def spill(self, *args: object) -> None:
        raise OSError("no spill here")

    def close(self) -> None:
        pass


async def _reply(transport: Transport, count: int) -> None:
    """Wait until the server has written ``count`` replies in all."""
    while len(transport.written) < count:
        await asyncio.sleep(0)


async def sessions(n: int, size: int) -> float:
    from smtpgate.connectors import bindings, config, specs
    from smtpgate.receiver import server
    from smtpgate.receiver.smtp import ConnectorSMTP

    compiled = config.compile_server(
        "bench",
        "bench",
        specs.TransportServerSpec.model_validate(
            {"fqdn": "bench.contoso.com", "nextHop": {"type": "Maildir", "path": "/nonexistent"}}
        ),
        [
            (
                "Internet",
                specs.ReceiveConnectorSpec.model_validate(
                    {
                        "server": "bench",
                        "usage": "Internet",
                        "bindings": ["0.0.0.0:25"],
                        "maxInboundConnection": 100000,
                        "maxInboundConnectionPerSource": 100000,
                        "maxInboundConnectionPercentagePerSource": 100,
                        "tarpitIntervalSeconds": 0,
                    }
                ),
            )
        ],
        [specs.AcceptedDomainSpec(domain_name="contoso.com")],
    )
    delivery = Accepting()
    runtime = server.Runtime(compiled.config, delivery)  # type: ignore[arg-type]
    binding = bindings.parse("0.0.0.0:25")
    line = b"X" * 78 + b"\r\n"
    body = b"From: <sender@example.org>\r\nTo: <user@contoso.com>\r\nSubject: bench\r\n\r\n"
    body += line * max(0, (size - len(body)) // len(line)) + b".\r\n"
    script = [
        b"EHLO client.example\r\n",
        b"MAIL FROM:<sender@example.org>\r\n",
        b"RCPT TO:<user@contoso.com>\r\n",
        b"DATA\r\n",
        body,
        b"QUIT\r\n",
    ]
    began = time.process_time()
    for _ in range(n):
        transport = Transport()
        smtp = ConnectorSMTP(runtime, binding)
        transport.protocol = smtp
        smtp.connection_made(transport)
        await _reply(transport, 1)
        for index, chunk in enumerate(script, start=2):
            smtp.data_received(chunk)
            await _reply(transport, index)
        while not transport.closing:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
    spent = time.process_time() - began
    if delivery.accepted != n:
        raise RuntimeError(f"{delivery.accepted} of {n} messages accepted")
    return spent / n


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compare", metavar="TREE", help="another copy of the source")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, str(ROOT))
        from smtpgate.receiver import server

        loop = server.new_event_loop()
        best = min(
            loop.run_until_complete(sessions(args.sessions, args.size)) for _ in range(args.repeat)
        )
        print(f"{best * 1e6:.1f}")
        return 0
    trees = [("this tree", None)] + ([(args.compare, args.compare)] if args.compare else [])
    results = {}
    for label, tree in trees * 2:  # interleaved, twice
        env = dict(os.environ, PYTHONPATH=tree) if tree else None
        out = subprocess.run(
            [sys.executable, __file__, "--one", *_passed(args)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
        ).stdout
        results[label] = min(results.get(label, float("inf")), float(out))
    for label, micros in results.items():
        print(f"{label:30} {micros:8.1f} µs CPU per session ({args.size} octets)")
    if args.compare:
        print(f"this tree / {args.compare}: {results['this tree'] / results[args.compare]:.2f}×")
    return 0


def _passed(args: argparse.Namespace) -> list[str]:
    return [
        "--sessions",
        str(args.sessions),
        "--size",
        str(args.size),
        "--repeat",
        str(args.repeat),
    ]


if __name__ == "__main__":
    sys.exit(main())
