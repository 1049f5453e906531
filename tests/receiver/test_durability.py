"""A 250 after DATA means durable: SIGKILL the receiver at random moments under load and
count what the clients saw acknowledged against what the spool holds."""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

import pytest
from smtpgate.receiver import delivery

from .conftest import free_port
from .helpers import internet_config_file, start_process
from .volumes import ext4_volume


def _start(
    config_file: pathlib.Path, spool: pathlib.Path, port: int, log: pathlib.Path
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpgate.receiver",
                "--config",
                str(config_file),
                "--spool",
                str(spool),
                "--listen-v4",
                "127.0.0.1",
                "--port-map",
                f"25={port}",
                "--protocol-log",
                os.devnull,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    raise AssertionError(log.read_text())


def test_sigkill_loses_no_acknowledged_message(tmp_path: pathlib.Path) -> None:
    config_file, spool, port = internet_config_file(tmp_path), tmp_path / "spool", free_port()
    log = tmp_path / "receiver.log"
    proc = _start(config_file, spool, port, log)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(10**9))

    def client(worker: int) -> None:
        while not stop.is_set():
            message_id = f"<{worker}.{next(counter)}@durability.test>"
            body = f"Message-ID: {message_id}\r\nSubject: durable\r\n\r\n{'x' * 512}\r\n".encode()
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                    smtp.sendmail("sender@example.org", ["user@contoso.com"], body)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)
                continue
            with lock:
                acked.append(message_id)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    rng = random.Random(1234)
    kills = 0
    deadline = time.monotonic() + 25
    while kills < 4 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = _start(config_file, spool, port, log)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(10)
    proc.terminate()
    proc.wait(20)

    spooled = b"".join(p.read_bytes() for p in (spool / "new").iterdir())
    lost = [m for m in acked if m.encode() not in spooled]
    assert kills == 4
    assert len(acked) > 20, "the load run must acknowledge messages between the kills"
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged messages are missing"


STRACE = shutil.which("strace")


def _children(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


SYSCALLS = (
    "fsync,fdatasync,syncfs,sync_file_range,rename,renameat,renameat2,write,writev,pwritev,pwritev2,"
    "sendto,sendmsg"
)
COMMITS = re.compile(r"^\d+ +(fsync|fdatasync|syncfs)\(")  # each may commit the journal


def _data_step(sync: str, ordered: bool, tmp: str, name: str) -> str:
    """How the spool makes a message's data safe before its rename: an fsync of its file
    ("file"); where the journal orders data (``delivery.orders_data``), its data written
    to the device and waited for, which commits nothing (the directory's sync then commits
    data and name at once); elsewhere a syncfs."""
    if sync == "file":
        return rf"fsync\(\d+<{tmp}/{name}>\) += 0"
    if ordered:
        return (
            rf"sync_file_range2?\(\d+<{tmp}/{name}>, 0, 0, "
            rf"SYNC_FILE_RANGE_WAIT_BEFORE\|SYNC_FILE_RANGE_WRITE\|SYNC_FILE_RANGE_WAIT_AFTER\) += 0"
        )
    return rf"syncfs\(\d+<{tmp}>\) += 0"


def _steps_in_order(trace: str, steps: list[tuple[str, str]], first: str) -> tuple[list[str], int]:
    """The steps as the trace shows them, in order, up to the 250; and how many syncs
    that may commit the journal ran from step ``first`` to that 250."""
    seen: list[str] = []
    commits = 0
    for line in trace.splitlines():
        line = line.replace(" <unfinished ...>", "")
        if first in seen and COMMITS.search(line) and "resumed>" not in line:
            commits += 1
        for step, pattern in steps:
            if step not in seen and re.search(pattern, line):
                seen.append(step)
        if "250" in seen:
            break
    return seen, commits


def _trace_journal(trace: str, spool: pathlib.Path, queue_id: str) -> tuple[list[str], int]:
    """The steps of a journaled message: its record written, the journal synced, the
    file renamed into new/, the 250."""
    journal, tmp, new = (re.escape(str(spool / d)) for d in ("smtpgate-journal", "tmp", "new"))
    name = rf"[^\"<>]*\.{queue_id}\.[^\"<>]*"
    return _steps_in_order(
        trace,
        [
            ("record", rf"pwritev2?\(\d+<{journal}/\d+>, \[.*\.{queue_id}\."),
            ("sync", rf"fdatasync\(\d+<{journal}/\d+>\) += 0"),
            ("rename", rf"rename(at2?)?\(.*\"{tmp}/{name}\", .*\"{new}/{name}\".*\) += 0"),
            (
                "250",
                rf"(write|sendto|writev|sendmsg)\(\d+<(socket|TCP).*\"250 2\.6\.0 <{queue_id}@",
            ),
        ],
        "record",
    )


def _trace_order(
    trace: str, spool: pathlib.Path, queue_id: str, big: bool, sync: str, ordered: bool
) -> tuple[list[str], int]:
    """The durability steps of the message ``queue_id`` in the order the trace shows
    them, up to the 250 that acknowledged it, and how many syncs that may commit the
    journal ran from its data step to that 250."""
    tmp, new = re.escape(str(spool / "tmp")), re.escape(str(spool / "new"))
    name = rf"[^\"<>]*\.{queue_id}\.[^\"<>]*"
    steps = [
        ("data", _data_step(sync, ordered, tmp, name)),
        ("rename", rf"rename(at2?)?\(.*\"{tmp}/{name}\", .*\"{new}/{name}\".*\) += 0"),
        ("directory", rf"fsync\(\d+<{new}>\) += 0"),
        ("250", rf"(write|sendto|writev|sendmsg)\(\d+<(socket|TCP).*\"250 2\.6\.0 <{queue_id}@"),
    ]
    if big:  # a spilled message: its file's data synced before it joins a commit
        steps.insert(0, ("spill", rf"fdatasync\(\d+<{tmp}/{name}>\) += 0"))
    return _steps_in_order(trace, steps, "data")


@pytest.mark.skipif(
    STRACE is None, reason="needs strace (apt-get install strace; make test installs it)"
)
@pytest.mark.parametrize(
    ("sync", "where"),
    [
        ("filesystem", "ext4-journal"),
        ("filesystem", "ext4-no-journal"),
        ("filesystem", "here"),
        ("file", "here"),
    ],
    ids=["filesystem-on-ext4-journal", "filesystem-on-ext4-no-journal", "filesystem", "file"],
)
@pytest.mark.parametrize(
    ("big", "journal"),
    [(False, True), (False, False), (True, True)],
    ids=["small", "small-no-journal", "spilled"],
)
def test_the_250_follows_a_durable_write(
    tmp_path: pathlib.Path, sync: str, where: str, big: bool, journal: bool
) -> None:
    """Here: the test's own folder, whatever filesystem it is on; ext4-journal: an ext4
    with a journal made for the test, where the group commit is one journal commit;
    ext4-no-journal: one made without, where the data is synced before the renames.
    small: the message's record written to the spool journal and synced (one
    ``fdatasync``, nothing else that may commit), then renamed into new/, then the 250;
    small-no-journal (``--spool-journal-mib 0``) and spilled (a spilled message is never
    journaled): data synced, renamed, new/ synced, then the 250."""
    with contextlib.ExitStack() as stack:
        if where != "here":
            mkfs = ("-O", "^has_journal") if where == "ext4-no-journal" else ()
            tmp_path = stack.enter_context(ext4_volume(tmp_path / "volume", *mkfs))
            assert delivery.orders_data(tmp_path) is (where == "ext4-journal")
        if journal and not big and not delivery.journal_pays(tmp_path):
            pytest.skip("the spool journal is not used on this filesystem (ext4 and XFS only)")
        _trace_one_message(tmp_path, sync, big, journal)


def _trace_one_message(tmp_path: pathlib.Path, sync: str, big: bool, journal: bool) -> None:
    assert STRACE is not None
    port, trace_file = free_port(), tmp_path / "trace"
    wrap = (STRACE, "-f", "-y", "-qq", "-s", "96", "-e", f"trace={SYSCALLS}", "-o", str(trace_file))
    off = () if journal else ("--spool-journal-mib", "0")
    proc = start_process(tmp_path, port, "--spool-sync", sync, *off, wrap=wrap)
    try:
        body = (b"x" * 70 + b"\r\n") * (8000 if big else 10)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail("s@example.org")
            client.rcpt("u@contoso.com")
            code, text = client.data(b"Subject: traced\r\n\r\n" + body)
        assert code == 250
        queue_id = text.decode().split("<", 1)[1].split("@", 1)[0]
    finally:
        for pid in _children(proc.pid):  # the receiver; strace ends with it
            os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            assert proc.stdout is not None
            proc.stdout.close()
    ordered = delivery.orders_data(tmp_path)
    trace = trace_file.read_text()
    if journal and not big:
        order, commits = _trace_journal(trace, tmp_path / "spool", queue_id)
        assert order == ["record", "sync", "rename", "250"], trace[-3000:]
        assert commits == 1, trace[-3000:]  # the journal's fdatasync, no directory sync
        return
    order, commits = _trace_order(trace, tmp_path / "spool", queue_id, big, sync, ordered)
    expected = ["data", "rename", "directory", "250"]
    assert order == (["spill", *expected] if big else expected), trace[-3000:]
    if sync == "filesystem" and ordered:
        # one journal commit per group: the directory's sync, and nothing else in between
        assert commits == 1, trace[-3000:]
