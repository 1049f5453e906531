"""Store and forward end to end on loopback, against Postfix's own queue on the same machine.

    .venv/bin/python bench/queue_throughput.py [--quick] [--messages N] [--rounds R]

Both servers take mail from Postfix's smtp-source, make it durable before 250 and forward
it to the same next hop, Postfix's smtp-sink (which accepts and discards). A run ends when
the clients are done and the server's queue is empty again, so the rate counts accepting
and forwarding together (``accept`` is the clients' own rate).

- smtpgate StoreAndForward: ``--workers`` auto, the spool's group commit (syncfs before 250),
  the queue's per-recipient delivery record; protocol log level Verbose into a file.
- Postfix: smtpd, cleanup (fsync of the queue file before 250), qmgr and the smtp client
  relaying to the sink (``relayhost``); its log (postlogd) into a file.

Needs Debian's postfix package. Prints msgs/s and CPU seconds per 1000 messages (servers'
processes, the sink excluded).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import receiver_throughput as rt  # noqa: E402 - the sibling benchmark's tools

ROOT = rt.ROOT


@dataclass
class Queued:
    name: str
    port: int
    pids: Callable[[], list[int]]
    backlog: Callable[[], int]  # messages not yet forwarded
    stop: Callable[[], None]


def _files(*folders: pathlib.Path) -> int:
    total = 0
    for folder in folders:
        for _, _, names in os.walk(folder):
            total += sum(1 for n in names if not n.startswith("."))
    return total


def start_smtpgate(work: pathlib.Path, sink_port: int) -> Queued:
    sys.path.insert(0, str(ROOT))
    from smtpgate.connectors import config, specs

    spool = work / "spool"
    server = specs.TransportServerSpec.model_validate(
        {
            "fqdn": "bench.contoso.com",
            "nextHop": {
                "type": "Smtp",
                "host": "127.0.0.1",
                "port": sink_port,
                "mode": "StoreAndForward",
                "path": str(spool),
            },
        }
    )
    connector = specs.ReceiveConnectorSpec.model_validate(
        {
            "server": "bench",
            "usage": "Internet",
            "bindings": ["0.0.0.0:25"],
            "maxInboundConnectionPerSource": 500,
            "maxInboundConnectionPercentagePerSource": 100,
            "tarpitIntervalSeconds": 0,
            "protocolLoggingLevel": "Verbose",
        }
    )
    compiled = config.compile_server(
        "bench",
        "bench",
        server,
        [("Internet", connector)],
        [specs.AcceptedDomainSpec(domain_name="contoso.com")],
    )
    config_file = work / "config-queue.json"
    config_file.write_text(compiled.config.to_json())
    port = rt.free_port()
    log = open(work / "receiver-queue.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtpgate.receiver",
            "--config",
            str(config_file),
            "--listen-v4",
            "127.0.0.1",
            "--port-map",
            f"25={port}",
            "--protocol-log",
            str(work / "protocol.log"),
            "--log-level",
            "INFO",
            "--workers",
            str(rt.WORKERS),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"the receiver did not start; see {work}/receiver-queue.log")
    rt.wait_port(port)

    def stop() -> None:
        proc.terminate()
        proc.wait(60)
        log.close()
        proc.stdout.close()  # type: ignore[union-attr]

    return Queued(
        "smtpgate StoreAndForward",
        port,
        lambda: rt._tree(proc.pid),
        lambda: _files(spool / "new", spool / "cur"),
        stop,
    )


def start_postfix(work: pathlib.Path, sink_port: int) -> Queued:
    """Postfix relaying everything to the sink: rt.start_postfix's instance, its
    transports pointed at the sink instead of discard."""
    server = rt.start_postfix(work)
    conf = work / "postfix"
    settings = {
        "default_transport": "smtp",
        "relay_transport": "smtp",
        "relayhost": f"[127.0.0.1]:{sink_port}",
        "smtp_connection_cache_on_demand": "yes",
    }
    subprocess.run(
        ["postconf", "-c", str(conf), *(f"{k}={v}" for k, v in settings.items())], check=True
    )
    subprocess.run(["postfix", "-c", str(conf), "reload"], check=True, capture_output=True)
    time.sleep(1)
    queue = work / "postfix-queue"
    return Queued(
        "postfix smtpd + queue + smtp",
        server.port,
        lambda: rt.postfix_pids(conf),
        lambda: _files(*(queue / d for d in ("maildrop", "incoming", "active", "deferred"))),
        server.stop,  # type: ignore[arg-type]
    )


def measure(server: Queued, sessions: int, length: int, n: int) -> tuple[float, float, float]:
    """msgs/s end to end, msgs/s as the clients saw it, CPU seconds per 1000 messages."""
    before = rt.cpu_seconds(server.pids(), True)
    began = time.perf_counter()
    sent = rt.run_clients(server.port, sessions, n, length, reuse=True)
    deadline = time.monotonic() + 600
    while server.backlog() and time.monotonic() < deadline:
        time.sleep(0.02)
    if server.backlog():
        raise RuntimeError(f"{server.name}: {server.backlog()} messages still queued")
    seconds = time.perf_counter() - began
    cpu = rt.cpu_seconds(server.pids(), True) - before
    return n / seconds, n / sent, cpu * 1000 / n


SCENARIOS = [
    ("1 KB, c=10, reuse", 10, 1024),
    ("1 KB, c=50, reuse", 50, 1024),
    ("100 KB, c=10, reuse", 10, 100 * 1024),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per 1 KB run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each scenario per server")
    parser.add_argument("--quick", action="store_true", help="fewer messages, one round")
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install postfix", file=sys.stderr)
            return 2
    count = 300 if args.quick else args.messages
    rounds = 1 if args.quick else args.rounds
    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-queue-bench-"))
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    sink = rt.start_sink(work)
    servers: list[Queued] = []
    try:
        servers = [start_smtpgate(work, sink.port), start_postfix(work, sink.port)]
        for label, sessions, length in SCENARIOS:
            n = count if length <= 1024 else max(100, count // 4)
            for round_ in range(rounds):
                for server in servers[round_ % 2 :] + servers[: round_ % 2]:
                    rate, accept, cpu = measure(server, sessions, length, n)
                    runs.setdefault((label, server.name), []).append((rate, accept, cpu))
                    print(
                        f"  {server.name:30} {label:22} {rate:7.0f} msg/s end to end "
                        f"({accept:7.0f} accepted/s) {cpu:6.2f} CPU s/1000",
                        flush=True,
                    )
    finally:
        for server in reversed(servers):
            server.stop()
        sink.stop()  # type: ignore[operator]
    names = [s.name for s in servers]
    print(f"\nmedian of {rounds} round(s), {count} messages per 1 KB run, {rt.WORKERS} cores\n")
    print(f"{'scenario':22} " + " ".join(f"{n:>36}" for n in names) + "  smtpgate/postfix")
    for label, *_ in SCENARIOS:
        cells, rates = [], []
        for name in names:
            measured = runs[(label, name)]
            rate = statistics.median(r for r, _, _ in measured)
            cpu = statistics.median(c for _, _, c in measured)
            rates.append(rate)
            cells.append(f"{rate:7.0f}/s {cpu:6.2f}cpu")
        print(
            f"{label:22} " + " ".join(f"{c:>36}" for c in cells) + f"  {rates[0] / rates[1]:5.2f}x"
        )
    print("\nmsg/s end to end = accepted and forwarded to the sink; cpu = CPU s per 1000")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
