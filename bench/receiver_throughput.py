"""Receiver throughput on loopback, side by side with Postfix on the same machine.

    make bench            (or: .venv/bin/python bench/receiver_throughput.py [--quick])

Clients are Postfix's smtp-source. Servers: smtpgate's receiver with a full Internet
connector policy, in maildir mode (fsync of file and directory before 250) and in relay mode
(250 only after the next hop, Postfix's smtp-sink, accepted); Postfix's smtp-sink (accepts
and discards: no durability); and Postfix's own smtpd with its normal queue (cleanup fsyncs
the queue file before 250), delivering to the discard transport. Needs Debian's postfix
package (apt-get install postfix). Prints msgs/s and server CPU seconds per 1000 messages.

    .venv/bin/python bench/receiver_throughput.py --rss [--rss-messages 20 --rss-mib 35]

measures memory instead: that many messages of that size sent at once (Python clients, one
connection each) to one receiver process in maildir mode, and its peak RSS (VmHWM) before
and after; Postfix's smtpd + queue too (the sum over its processes' peaks) when installed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLK = os.sysconf("SC_CLK_TCK")
WORKERS = os.cpu_count() or 1  # the receiver's --workers auto


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pids: list[int], children: bool = False) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        if children:
            total += int(fields[13]) + int(fields[14])
    return total / CLK


def postfix_pids(config_dir: pathlib.Path) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(config_dir) in cmdline or "/usr/lib/postfix/sbin/" in cmdline:
            pids.append(int(entry.name))
    return pids


@dataclass
class Server:
    name: str
    port: int
    pids: list[int]
    children: bool
    stop: object


def _tree(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(p) for p in path.read_text().split()] if path.exists() else []
    return [pid, *children]


def start_smtpgate(
    work: pathlib.Path, mode: str, sink_port: int | None, workers: int = WORKERS
) -> Server:
    sys.path.insert(0, str(ROOT))
    from smtpgate.connectors import config, specs

    next_hop = {"type": "Maildir", "path": str(work / "spool")}
    if mode == "relay":
        next_hop = {"type": "Smtp", "host": "127.0.0.1", "port": sink_port}
    server = specs.TransportServerSpec.model_validate(
        {"fqdn": "bench.contoso.com", "nextHop": next_hop}
    )
    connector = specs.ReceiveConnectorSpec.model_validate(
        {
            "server": "bench",
            "usage": "Internet",
            "bindings": ["0.0.0.0:25"],
            "maxInboundConnectionPerSource": 500,
            "maxInboundConnectionPercentagePerSource": 100,
            "tarpitIntervalSeconds": 0,
        }
    )
    compiled = config.compile_server(
        "bench",
        "bench",
        server,
        [("Internet", connector)],
        [specs.AcceptedDomainSpec(domain_name="contoso.com")],
    )
    config_file = work / f"config-{mode}.json"
    config_file.write_text(compiled.config.to_json())
    port = free_port()
    log = open(work / f"receiver-{mode}.log", "wb")  # noqa: SIM115 - closed with the process
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
            os.devnull,
            "--log-level",
            "WARNING",
            "--workers",
            str(workers),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":  # every worker listens
        raise RuntimeError(f"the receiver did not start; see {work}/receiver-{mode}.log")
    wait_port(port)

    def stop() -> None:
        proc.terminate()
        proc.wait(30)
        log.close()
        proc.stdout.close()  # type: ignore[union-attr]

    return Server(f"smtpgate {mode}", port, _tree(proc.pid), False, stop)


def start_sink(work: pathlib.Path) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        ["smtp-sink", "-u", "postfix", "-c", f"127.0.0.1:{port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)

    def stop() -> None:
        proc.terminate()
        proc.wait(10)

    return Server("postfix smtp-sink (discard)", port, [proc.pid], False, stop)


def start_postfix(work: pathlib.Path) -> Server:
    conf = work / "postfix"
    conf.mkdir()
    work.chmod(0o755)  # Postfix's daemons run as the postfix user
    (work / "postfix-queue").mkdir()
    (work / "postfix-data").mkdir()
    shutil.chown(work / "postfix-data", "postfix")
    port = free_port()
    (conf / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {work}/postfix-queue
data_directory = {work}/postfix-data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = contoso.com
default_transport = discard
relay_transport = discard
local_transport = discard
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 150
maillog_file = {work}/postfix.log
maillog_file_prefixes = {work}
""")
    master = pathlib.Path("/etc/postfix/master.cf").read_text()
    master = re.sub(
        r"^smtp\s+inet\s.*$", f"127.0.0.1:{port} inet n - y - - smtpd", master, flags=re.M
    )
    (conf / "master.cf").write_text(master)
    started = subprocess.run(["postfix", "-c", str(conf), "start"], capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"postfix did not start: {started.stderr} (see {work}/postfix.log)")
    wait_port(port)

    def stop() -> None:
        subprocess.run(["postfix", "-c", str(conf), "stop"], check=False, capture_output=True)
        time.sleep(1)

    return Server("postfix smtpd + queue (fsync)", port, [], True, stop)


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


SCENARIOS = [
    ("1 KB, c=1, new connection", 1, 1024, False),
    ("1 KB, c=10, new connection", 10, 1024, False),
    ("1 KB, c=50, new connection", 50, 1024, False),
    ("1 KB, c=1, reuse", 1, 1024, True),
    ("1 KB, c=10, reuse", 10, 1024, True),
    ("1 KB, c=50, reuse", 50, 1024, True),
    ("100 KB, c=10, reuse", 10, 100 * 1024, True),
]


NAMES = [
    "smtpgate maildir",
    "smtpgate relay",
    "postfix smtp-sink (discard)",
    "postfix smtpd + queue (fsync)",
]


def measure(
    server: Server, work: pathlib.Path, sessions: int, length: int, reuse: bool, n: int
) -> tuple[float, float]:
    """One run against ``server``: msgs/s and CPU seconds per 1000 messages."""
    pids = server.pids or postfix_pids(work / "postfix")
    before = cpu_seconds(pids, server.children)
    seconds = run_clients(server.port, sessions, n, length, reuse)
    if server.name.startswith("postfix smtpd"):
        time.sleep(1)  # let cleanup and qmgr finish what smtpd queued
    pids = server.pids or postfix_pids(work / "postfix")
    cpu = cpu_seconds(pids, server.children) - before
    return n / seconds, cpu * 1000 / n


def peak_rss_mib(pids: list[int]) -> float:
    """The sum of the processes' peak resident set sizes (VmHWM), in MiB."""
    total = 0
    for pid in pids:
        try:
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        total += int(found[1]) if found else 0
    return total / 1024


def send_concurrently(port: int, count: int, size: int) -> list[int]:
    """``count`` messages of ``size`` bytes at once, one connection each: the DATA replies."""
    import smtplib
    import threading

    line = b"x" * 76 + b"\r\n"
    body = line * (size // len(line))
    codes: list[int] = []

    def one(n: int) -> None:
        message = f"Subject: rss {n}\r\n\r\n".encode() + body
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=600) as client:
                client.sendmail("sender@example.org", ["user@contoso.com"], message)
                codes.append(250)
        except smtplib.SMTPException as err:
            codes.append(getattr(err, "smtp_code", 0) or 1)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def rss(count: int, mib: int) -> int:
    """Peak RSS of one receiver process (and of Postfix) for ``count`` messages at once."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-rss-"))
    servers = [lambda: start_smtpgate(work, "maildir", None, workers=1)]
    if shutil.which("postfix") is not None:
        servers.append(lambda: start_postfix(work))
    for start in servers:
        server = start()
        try:
            pids = server.pids or postfix_pids(work / "postfix")
            idle = peak_rss_mib(pids)
            began = time.perf_counter()
            codes = send_concurrently(server.port, count, mib << 20)
            seconds = time.perf_counter() - began
            pids = server.pids or postfix_pids(work / "postfix")
            peak = peak_rss_mib(pids)
        finally:
            server.stop()  # type: ignore[operator]
        accepted = codes.count(250)
        print(
            f"{server.name:32} {count} x {mib} MiB at once: {accepted}/{count} accepted in "
            f"{seconds:.1f}s; peak RSS {peak:.0f} MiB (idle {idle:.0f} MiB)",
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per 1 KB scenario")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each scenario per server")
    parser.add_argument("--quick", action="store_true", help="fewer messages, one round")
    parser.add_argument("--rss", action="store_true", help="measure peak memory instead")
    parser.add_argument("--rss-messages", type=int, default=20, help="messages sent at once")
    parser.add_argument("--rss-mib", type=int, default=35, help="size of each, in MiB")
    args = parser.parse_args()
    if args.rss:
        return rss(args.rss_messages, args.rss_mib)
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install postfix", file=sys.stderr)
            return 2
    count = 300 if args.quick else args.messages
    rounds = 1 if args.quick else args.rounds
    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-bench-"))
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    started: list[Server] = []
    try:
        sink_for_relay = start_sink(work)
        started.append(sink_for_relay)
        servers = [
            start_smtpgate(work, "maildir", None),
            start_smtpgate(work, "relay", sink_for_relay.port),
            start_sink(work),
            start_postfix(work),
        ]
        started += servers
        # All servers run throughout; each round takes every scenario on every server in
        # turn (the order rotating), so a slow spell of the machine falls on all of them.
        for label, sessions, length, reuse in SCENARIOS:
            n = count if length <= 1024 else max(100, count // 4)
            for round_ in range(rounds):
                for server in servers[round_ % len(servers) :] + servers[: round_ % len(servers)]:
                    rate, cpu = measure(server, work, sessions, length, reuse, n)
                    runs.setdefault((label, server.name), []).append((rate, cpu))
                    print(
                        f"  {server.name:32} {label:28} {rate:8.0f} msg/s  {cpu:6.2f} CPU s/1000",
                        flush=True,
                    )
    finally:
        for server in reversed(started):
            server.stop()  # type: ignore[operator]
    print(f"\nmedian of {rounds} round(s), {count} messages per 1 KB run\n")
    print(f"{'scenario':28} " + " ".join(f"{n[:22]:>22}" for n in NAMES) + "   maildir/postfix")
    for label, *_ in SCENARIOS:
        cells, medians = [], {}
        for name in NAMES:
            measured = runs.get((label, name), [])
            rate = statistics.median(r for r, _ in measured) if measured else 0.0
            cpu = statistics.median(c for _, c in measured) if measured else 0.0
            medians[name] = rate
            cells.append(f"{rate:8.0f}/s {cpu:6.2f}cpu")
        theirs = medians["postfix smtpd + queue (fsync)"]
        ratio = medians["smtpgate maildir"] / theirs if theirs else 0.0
        print(f"{label:28} " + " ".join(f"{c:>22}" for c in cells) + f"   {ratio:5.2f}x")
    print("\nmsg/s = messages per second; cpu = server CPU seconds per 1000 messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
