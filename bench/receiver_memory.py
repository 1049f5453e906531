"""The receiver's memory: big messages at once, and idle connections.

    .venv/bin/python bench/receiver_memory.py [--messages 10 --mib 30] [--idle 1000,10000]

One receiver process (``--workers 1``: every connection lands in it; maildir spool, the
Internet connector with its connection limits raised above the counts used) takes
``--messages`` messages of ``--mib`` MiB at once, one connection each, and the peak RSS
(VmHWM) is printed with the RSS before. Then, for each count in ``--idle``, a fresh
receiver gets that many connections that read the banner and say nothing more; its RSS
once all are open, less its RSS before, divided by the count, is the RSS per idle
connection. The bench raises its own RLIMIT_NOFILE (the receiver inherits it) and talks
to 127.0.0.1 only. Postfix's smtpd + queue takes the big messages too when installed
(the sum of its processes' peaks).
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import re
import resource
import shutil
import smtplib
import sys
import tempfile
import threading
import time

import servers


def status(pids: list[int], field: str) -> float:
    """The sum of a /proc/PID/status field (VmRSS, VmHWM) over ``pids``, in MiB."""
    total = 0
    for pid in pids:
        try:
            text = pathlib.Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
        total += int(found[1]) if found else 0
    return total / 1024


def send_concurrently(port: int, count: int, size: int) -> list[int]:
    """``count`` messages of ``size`` bytes at once, one connection each: the DATA replies."""
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


def big_messages(count: int, mib: int) -> None:
    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-rss-"))
    starts = [lambda: servers.start_smtpgate(work, "maildir", workers=1)]
    if shutil.which("postfix") is not None:
        limit = str((mib + 1) << 20)  # its default refuses messages over 10 MB
        starts.append(
            lambda: servers.start_postfix(work, message_size_limit=limit, mailbox_size_limit=limit)
        )
    try:
        for start in starts:
            server = start()
            try:
                pids = server.cgroup.members()
                idle = status(pids, "VmRSS")
                began = time.perf_counter()
                codes = send_concurrently(server.port, count, mib << 20)
                seconds = time.perf_counter() - began
                peak = status(server.cgroup.members(), "VmHWM")
            finally:
                server.close()
            print(
                f"{server.name:30} {count} x {mib} MiB at once: {codes.count(250)}/{count} "
                f"accepted in {seconds:.1f} s; peak RSS {peak:.0f} MiB (before: {idle:.0f} MiB)",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _hold(port: int, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections that have read the banner (100 opening at a time, well
    within the listen backlog)."""
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(100)

    async def one() -> None:
        async with gate:
            opening = asyncio.open_connection("127.0.0.1", port)
            reader, writer = await asyncio.wait_for(opening, 60)
            banner = await asyncio.wait_for(reader.readline(), 60)
            if not banner.startswith(b"220"):
                raise RuntimeError(f"no banner: {banner!r}")
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    return held


def idle_connections(count: int) -> None:
    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-idle-"))
    server = servers.start_smtpgate(work, "maildir", workers=1, max_connections=count + 100)
    try:
        pids = server.cgroup.members()
        time.sleep(0.5)
        before = status(pids, "VmRSS")

        async def run() -> float:
            held = await _hold(server.port, count)
            await asyncio.sleep(1)
            after = status(pids, "VmRSS")
            for writer in held:
                writer.close()
            return after

        after = asyncio.run(run())
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    per = (after - before) * 1024 / count
    print(
        f"{count} idle connections (banner read): RSS {before:.0f} MiB before, {after:.0f} MiB "
        f"with them open: {per:.1f} KiB per connection",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10, help="big messages at once")
    parser.add_argument("--mib", type=int, default=30, help="size of each, in MiB")
    parser.add_argument("--idle", default="1000,10000", help="idle connection counts")
    args = parser.parse_args()
    counts = [int(c) for c in args.idle.split(",") if c]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(counts, default=0) + 1000
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            print(f"RLIMIT_NOFILE's hard limit {hard} is below {wanted}", file=sys.stderr)
            return 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if args.messages:
        big_messages(args.messages, args.mib)
    for count in counts:
        idle_connections(count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
