"""Receiver throughput and latency on loopback, side by side with Postfix on the same machine.

    make bench            (or: .venv/bin/python bench/receiver_throughput.py [--quick])

The load client is Postfix's smtp-source (it stops at the first reply that is not what it
expects, so every message of a run was accepted). Servers (bench/servers.py, each in a
cpuacct cgroup of its own, both spooling on the same filesystem, an ext4 with a journal made
for the run (``--spool-in`` names another), neither logging a line per message to a file;
the configuration of both is printed first): smtpgate's receiver with a
full Internet connector policy in maildir mode (durable before 250), and Postfix's smtpd
with its queue (cleanup fsyncs the queue file before 250) delivering to the discard
transport, with in_flow_delay = 0. ``--with-reference`` adds smtpgate in relay mode and
Postfix's smtp-sink (no durability). Each server is first warmed up (a tenth of a run at
c=1 and at c=10, not counted); each round then runs every scenario on every server in
turn, the order rotating; the table gives the median of the rounds and their spread, msgs/s
and server CPU seconds per 1000 messages (the cgroup's, so Postfix's short-lived processes
and its queue manager and discard delivery count too).

Latency: a Python client (uvloop) times every step of a session, from sending it to its
reply (from the connection to the banner, HELO, MAIL, RCPT, DATA, the final ``.`` to the
250, QUIT), one message per connection, at 1 and 50 sessions: p50 and p99 of the final
``.`` to the 250 over all rounds, and at 1 session a table of each step's median for
every server side by side: where a c=1 session spends its time.

Needs Debian's postfix package (make postfix installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import servers

# label, sessions, size, reuse: the table of issue 18
SCENARIOS = [
    ("1 KB, c=1, new connection", 1, 1024, False),
    ("1 KB, c=10, new connection", 10, 1024, False),
    ("1 KB, c=50, new connection", 50, 1024, False),
    ("100 KB, c=10, new connection", 10, 100 * 1024, False),
    ("1 KB, c=10, reuse", 10, 1024, True),
]
LATENCY = [("c=1", 1, 300), ("c=50", 50, 1500)]  # sessions, messages per round
OURS, THEIRS = "smtpgate maildir", "postfix smtpd + queue (fsync)"


def run_clients(port: int, sessions: int, messages: int, length: int, reuse: bool) -> float:
    args = [
        "smtp-source",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(length),
        "-f",
        "sender@example.org",
        "-t",
        "user@contoso.com",
        "-M",
        "client.example",
    ]
    if reuse:
        args.append("-d")
    began = time.perf_counter()
    subprocess.run([*args, f"127.0.0.1:{port}"], check=True, capture_output=True, timeout=900)
    return time.perf_counter() - began


def count(spool: pathlib.Path | None) -> int:
    return sum(1 for _ in os.scandir(spool)) if spool is not None and spool.exists() else 0


def wait_drained(server: servers.Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not server.drained() and time.monotonic() < deadline:
        time.sleep(0.05)


def measure(
    server: servers.Server, sessions: int, length: int, reuse: bool, n: int
) -> tuple[float, float]:
    """One run: msgs/s and CPU seconds per 1000 messages (what the server's queue does
    with them afterwards included)."""
    before, spooled = server.cgroup.cpu_seconds(), count(server.spool)
    seconds = run_clients(server.port, sessions, n, length, reuse)
    wait_drained(server)
    cpu = server.cgroup.cpu_seconds() - before
    if server.spool is not None:
        found = count(server.spool) - spooled
        if found != n:
            raise RuntimeError(f"{server.name}: {n} messages acknowledged, {found} spooled")
        for entry in os.scandir(server.spool):  # outside the timing: new/ stays small
            os.unlink(entry.path)
    return n / seconds, cpu * 1000 / n


def warm_up(server: servers.Server, n: int) -> tuple[float, float]:
    """Runs not counted before the first round (``n`` messages at c=1, then c=10; their
    msgs/s), so that no server's first measured run is also the first use of the new spool
    volume and of its own code."""
    return measure(server, 1, 1024, False, n)[0], measure(server, 10, 1024, False, n)[0]


# The steps of a latency session, each timed from sending it to its reply.
CONNECT, FINAL_DOT, QUIT = "connect, banner", "final '.' to 250", "QUIT"
COMMANDS = (
    ("HELO", b"HELO client.example\r\n"),
    ("MAIL", b"MAIL FROM:<sender@example.org>\r\n"),
    ("RCPT", b"RCPT TO:<user@contoso.com>\r\n"),
    ("DATA", b"DATA\r\n"),
)
STEPS = (CONNECT, *(step for step, _ in COMMANDS), FINAL_DOT, QUIT)


async def _latency(port: int, sessions: int, messages: int) -> dict[str, list[float]]:
    """Seconds each step of a session takes, from sending it to its reply (from opening
    the connection to the banner), one message per connection; ``STEPS`` names them. The
    message's 12 lines go first, then the clock starts and the final ``.`` goes."""
    body = b"Subject: latency\r\nFrom: <sender@example.org>\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12
    steps: dict[str, list[float]] = {step: [] for step in STEPS}
    left = [messages]
    clock = time.perf_counter

    async def reply(reader: asyncio.StreamReader) -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    async def step(
        name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes
    ) -> bytes:
        began = clock()
        writer.write(line)
        answer = await reply(reader)
        steps[name].append(clock() - began)
        return answer

    async def session() -> None:
        while left[0] > 0:
            left[0] -= 1
            began = clock()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reply(reader)
            steps[CONNECT].append(clock() - began)
            for name, command in COMMANDS:
                await step(name, reader, writer, command)
            writer.write(body)
            answer = await step(FINAL_DOT, reader, writer, b".\r\n")
            if not answer.startswith(b"250"):
                raise RuntimeError(f"refused: {answer!r}")
            await step(QUIT, reader, writer, b"QUIT\r\n")
            writer.close()

    await asyncio.gather(*(session() for _ in range(sessions)))
    return steps


def latency(server: servers.Server, sessions: int, messages: int) -> dict[str, list[float]]:
    """Every step's times (``_latency``), once the messages are all in the spool."""
    import uvloop

    spooled = count(server.spool)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        steps = runner.run(_latency(server.port, sessions, messages))
    wait_drained(server)
    if server.spool is not None and count(server.spool) - spooled != messages:
        raise RuntimeError(f"{server.name}: not every acknowledged message is in the spool")
    return steps


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load() -> str:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per 1 KB run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each scenario per server")
    parser.add_argument("--quick", action="store_true", help="fewer messages, one round")
    parser.add_argument("--only", help="scenarios whose label contains this")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    parser.add_argument(
        "--with-reference", action="store_true", help="smtpgate relay and smtp-sink too"
    )
    parser.add_argument(
        "--with-floor",
        action="store_true",
        help="bench/floor_server.py too: the least any Python server on the receiver's "
        "spool does per message (fixed replies, the same group commit, the same workers)",
    )
    parser.add_argument(
        "--smtpgate-arg", action="append", default=[], help="one more receiver argument"
    )
    parser.add_argument(
        "--no-cpu-weight",
        action="store_true",
        help="leave the servers out of cpu cgroups of equal weight (bench/servers.py, Cgroup)",
    )
    parser.add_argument(
        "--compare",
        metavar="TREE",
        help="also run the receiver from another copy of its source (a folder holding "
        "smtpgate/receiver and smtpgate/connectors, e.g. from git archive), interleaved",
    )
    parser.add_argument(
        "--spool-in",
        metavar="DIR",
        help="keep every server's spool and queue in a folder under DIR (on its filesystem) "
        "instead of on an ext4 made for the run (servers.spool_volume)",
    )
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: make postfix (apt-get install postfix)", file=sys.stderr)
            return 2
    servers.WEIGHTED = not args.no_cpu_weight
    n1 = 300 if args.quick else args.messages
    rounds = 1 if args.quick else args.rounds
    scenarios = [s for s in SCENARIOS if not args.only or args.only in s[0]]
    if args.spool_in:
        volume: contextlib.AbstractContextManager[pathlib.Path] = contextlib.nullcontext(
            pathlib.Path(args.spool_in)
        )
    else:
        volume = servers.spool_volume()
    with volume as where:
        return run(args, where, n1, rounds, scenarios)


def run(
    args: argparse.Namespace,
    where: pathlib.Path,
    n1: int,
    rounds: int,
    scenarios: list[tuple[str, int, int, bool]],
) -> int:
    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-bench-", dir=where))
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    waits: dict[tuple[str, str], list[float]] = {}
    alone: dict[str, dict[str, list[float]]] = {}  # server: step: times, at c=1
    started: list[servers.Server] = []
    try:
        extra = tuple(args.smtpgate_arg)
        running = [servers.start_smtpgate(work, "maildir", extra=extra)]
        started += running
        if args.compare:
            running.append(servers.start_smtpgate(work, "maildir", extra=extra, tree=args.compare))
            started.append(running[-1])
        if args.with_reference:
            sink = servers.start_sink(work)
            started.append(sink)
            running.append(servers.start_smtpgate(work, "relay", sink.port, extra=extra))
            running.append(servers.start_sink(work))
            started += running[-2:]
        if args.with_floor:
            running.append(servers.start_floor(work))
            started.append(running[-1])
        running.append(servers.start_postfix(work))
        started.append(running[-1])
        print(f"{os.cpu_count()} cores; load average at start {load()}")
        for server in running:
            accounting = "cpuacct cgroup" if server.cgroup.exact else "/proc of its processes"
            if server.cgroup.weighted is not None:
                accounting += "; in a cpu cgroup of weight 1024 (cpu.shares)"
            print(f"\n{server.name} (CPU: {accounting})")
            for line in server.settings:
                print(f"  {line}")
        if running[0].settings:
            print(f"  smtpgate logging: {servers.smtpgate_logging()}")
        print()
        warm = max(30, n1 // 10)
        for server in running:
            rates = warm_up(server, warm)
            print(
                f"  warm-up {server.name:28} {warm} messages at c=1 and c=10 "
                f"({rates[0]:.0f}, {rates[1]:.0f} msg/s), not counted",
                flush=True,
            )
        for round_ in range(rounds):
            order = running[round_ % len(running) :] + running[: round_ % len(running)]
            for label, sessions, length, reuse in scenarios:
                n = n1 if length <= 1024 else max(100, n1 // 4)
                for server in order:
                    rate, cpu = measure(server, sessions, length, reuse, n)
                    runs.setdefault((label, server.name), []).append((rate, cpu))
                    print(
                        f"  round {round_ + 1} {server.name:30} {label:29} {rate:7.0f} msg/s"
                        f" {cpu:6.2f} CPU s/1000  load {load()}",
                        flush=True,
                    )
            if args.no_latency:
                continue
            for label, sessions, messages in LATENCY:
                messages = messages // 3 if args.quick else messages
                for server in (s for s in order if s.spool is not None or s.name == THEIRS):
                    steps = latency(server, sessions, messages)
                    samples = steps[FINAL_DOT]
                    waits.setdefault((label, server.name), []).extend(samples)
                    if sessions == 1:
                        for step, times in steps.items():
                            alone.setdefault(server.name, {}).setdefault(step, []).extend(times)
                    print(
                        f"  round {round_ + 1} {server.name:30} latency {label:5}"
                        f" p50 {percentile(samples, 0.5) * 1000:6.2f} ms"
                        f" p99 {percentile(samples, 0.99) * 1000:6.2f} ms",
                        flush=True,
                    )
    finally:
        for server in reversed(started):
            server.close()
        shutil.rmtree(work, ignore_errors=True)
    report(running, scenarios, runs, waits, rounds, n1)
    report_steps(alone)
    return 0


def report(
    running: list[servers.Server],
    scenarios: list[tuple[str, int, int, bool]],
    runs: dict[tuple[str, str], list[tuple[float, float]]],
    waits: dict[tuple[str, str], list[float]],
    rounds: int,
    n1: int,
) -> None:
    print(f"\nmedian of {rounds} round(s), {n1} messages per 1 KB run; load now {load()}\n")
    print(
        "| scenario | smtpgate msg/s | Postfix msg/s | smtpgate / Postfix (rounds) "
        "| smtpgate CPU s per 1000 | Postfix CPU s per 1000 |"
    )
    print("|---|---|---|---|---|---|")
    for label, *_ in scenarios:
        ours, theirs = runs.get((label, OURS), []), runs.get((label, THEIRS), [])
        if not ours or not theirs:
            continue
        ratios = sorted(o[0] / t[0] for o, t in zip(ours, theirs, strict=True))
        print(
            f"| {label} | {statistics.median(r for r, _ in ours):.0f} "
            f"| {statistics.median(r for r, _ in theirs):.0f} "
            f"| **{statistics.median(ratios):.2f}×** ({', '.join(f'{r:.2f}' for r in ratios)}) "
            f"| {statistics.median(c for _, c in ours):.2f} "
            f"| {statistics.median(c for _, c in theirs):.2f} |"
        )
    others = [s.name for s in running if s.name not in (OURS, THEIRS)]
    for name in [n for n in others if "maildir" in n]:
        print(f"\n{OURS} / {name}, median (rounds):")
        for label, *_ in scenarios:
            ours, base = runs.get((label, OURS), []), runs.get((label, name), [])
            ratios = sorted(o[0] / b[0] for o, b in zip(ours, base, strict=True))
            if ratios:
                cpu = statistics.median(c for _, c in base)
                print(
                    f"  {label:29} {statistics.median(ratios):.2f}× "
                    f"({', '.join(f'{r:.2f}' for r in ratios)}); its CPU s per 1000 {cpu:.2f}"
                )
        for label, *_ in LATENCY:
            if (label, name) in waits:
                samples = waits[(label, name)]
                print(
                    f"  latency {label}: p50 {percentile(samples, 0.5) * 1000:.2f} ms, "
                    f"p99 {percentile(samples, 0.99) * 1000:.2f} ms"
                )
    for name in others:
        cells = []
        for label, *_ in scenarios:
            if (label, name) in runs:
                rate = statistics.median(r for r, _ in runs[(label, name)])
                cpu = statistics.median(c for _, c in runs[(label, name)])
                theirs = runs.get((label, THEIRS), [])
                ratios = sorted(
                    o[0] / t[0] for o, t in zip(runs[(label, name)], theirs, strict=False)
                )
                versus = (
                    f" ({statistics.median(ratios):.2f}× Postfix: "
                    + ", ".join(f"{r:.2f}" for r in ratios)
                    + ")"
                )
                cells.append(
                    f"{label}: {rate:.0f}/s, {cpu:.2f} CPU s/1000{versus if ratios else ''}"
                )
        print(f"\n{name}: " + "; ".join(cells))
        for label, *_ in LATENCY:
            if (label, name) in waits:
                samples = waits[(label, name)]
                print(
                    f"  latency {label}: p50 {percentile(samples, 0.5) * 1000:.2f} ms, "
                    f"p99 {percentile(samples, 0.99) * 1000:.2f} ms"
                )
    if waits:
        print("\n| final '.' to 250 | smtpgate p50 | smtpgate p99 | Postfix p50 | Postfix p99 |")
        print("|---|---|---|---|---|")
        for label, *_ in LATENCY:
            ours, theirs = waits.get((label, OURS), []), waits.get((label, THEIRS), [])
            if ours and theirs:
                print(
                    f"| {label}, new connection | {percentile(ours, 0.5) * 1000:.2f} ms "
                    f"| {percentile(ours, 0.99) * 1000:.2f} ms "
                    f"| {percentile(theirs, 0.5) * 1000:.2f} ms "
                    f"| {percentile(theirs, 0.99) * 1000:.2f} ms |"
                )


def report_steps(alone: dict[str, dict[str, list[float]]]) -> None:
    """Where a c=1 session spends its time: each step's median, from sending it to its
    reply, for every server side by side (the same client for all)."""
    if not alone:
        return
    medians = {
        name: [percentile(times[step], 0.5) for step in STEPS] for name, times in alone.items()
    }
    print("\nat c=1, each step from sending it to its reply: p50 of every round's sessions, µs\n")
    print("| step | " + " | ".join(medians) + " |")
    print("|---" * (len(medians) + 1) + "|")
    rows = [*zip(STEPS, *medians.values(), strict=True)]
    rows.append(("sum of the medians", *(sum(column) for column in medians.values())))
    for step, *seconds in rows:
        print(f"| {step} | " + " | ".join(f"{s * 1e6:.0f}" for s in seconds) + " |")


if __name__ == "__main__":
    sys.exit(main())
