"""A 250 after DATA means durable: SIGKILL the receiver at random moments under load and
count what the clients saw acknowledged against what the spool holds."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

from .conftest import free_port
from .helpers import internet_config_file


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
