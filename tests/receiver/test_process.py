"""The receiver as a process: SIGTERM lets sessions finish; workers share the port."""

from __future__ import annotations

import pathlib
import signal
import smtplib
import socket
import time
import urllib.error
import urllib.request

from .conftest import free_port
from .helpers import Raw, internet_config_file, start_process


def _children(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_sigterm_stops_accepting_and_lets_the_session_in_flight_finish(
    tmp_path: pathlib.Path,
) -> None:
    port, health = free_port(), free_port()
    proc = start_process(
        tmp_path,
        port,
        "--grace-seconds",
        "20",
        "--health-port",
        str(health),
        "--health-host",
        "127.0.0.1",
    )
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=5) as response:
            assert response.status == 200
        raw = Raw(port)
        raw.reply()
        raw.command("EHLO client.example")
        raw.command("MAIL FROM:<s@example.org>")
        raw.command("RCPT TO:<u@contoso.com>")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            refused = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            pass
        else:
            refused.close()
            raise AssertionError("a stopping receiver must not accept new connections")
        assert raw.command("DATA")[0] == 354
        raw.send(b"Subject: in flight\r\n\r\nbody\r\n.\r\n")
        assert raw.reply()[0] == 250
        # Read while the session is still open: once it ends the receiver exits.
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'smtpgate_messages_accepted_total{connector="Internet"} 1.0' in metrics
        assert 'smtpgate_sessions_total{connector="Internet"} 1.0' in metrics
        raw.command("QUIT")
        raw.close()
        assert proc.wait(15) == 0
        assert len(list((tmp_path / "spool" / "new").iterdir())) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_sigterm_tells_a_session_still_open_after_the_grace_421(tmp_path: pathlib.Path) -> None:
    port = free_port()
    proc = start_process(tmp_path, port, "--grace-seconds", "1")
    try:
        raw = Raw(port)
        raw.reply()
        raw.command("EHLO client.example")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert raw.command("NOOP")[0] == 250  # within the grace: served as before
        code, text = raw.reply()  # at its end: a reply, not a reset
        assert (code, text.split()[0]) == (421, "4.3.2"), text
        raw.close()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_workers_share_the_port_and_stop_together(tmp_path: pathlib.Path) -> None:
    port, health = free_port(), free_port()
    proc = start_process(
        tmp_path,
        port,
        "--workers",
        "2",
        "--health-port",
        str(health),
        "--health-host",
        "127.0.0.1",
    )
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2
        for n in range(20):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.sendmail(
                    "s@example.org", ["u@contoso.com"], f"Subject: {n}\r\n\r\nbody\r\n".encode()
                )
        assert len(list((tmp_path / "spool" / "new").iterdir())) == 20
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/metrics", timeout=5) as page:
            metrics = page.read().decode()
        # One worker answers the scrape and counts what both accepted: SO_REUSEPORT spreads
        # 20 connections over both (all on one: a chance of one in a million).
        assert 'smtpgate_sessions_total{connector="Internet"} 20.0' in metrics, metrics[:2000]
        assert 'smtpgate_messages_accepted_total{connector="Internet"} 20.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for pid in workers:
            assert (
                not pathlib.Path(f"/proc/{pid}").exists()
                or "Z" in pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2]
            )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _ready(health: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_not_ready_while_a_binding_cannot_listen(tmp_path: pathlib.Path) -> None:
    port, submission, health = free_port(), free_port(), free_port()
    occupied = socket.socket()
    occupied.bind(("127.0.0.1", submission))
    occupied.listen()
    config = internet_config_file(tmp_path, ("0.0.0.0:25", "0.0.0.0:587"))
    proc = start_process(
        tmp_path,
        port,
        "--port-map",
        f"25={port},587={submission}",
        "--health-port",
        str(health),
        "--health-host",
        "127.0.0.1",
        config=config,
    )
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            assert smtp.noop()[0] == 250  # the other binding serves
        assert _ready(health) == 503
        occupied.close()  # the port comes free: the binding is tried again
        deadline = time.monotonic() + 10
        while _ready(health) != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.2)
        with smtplib.SMTP("127.0.0.1", submission, timeout=10) as smtp:
            assert smtp.noop()[0] == 250
    finally:
        occupied.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        assert proc.stdout is not None
        proc.stdout.close()
