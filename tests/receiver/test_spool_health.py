"""The spool's back pressure as the receiver reports it: on a small filesystem made for the
test (a tmpfs of 4 MiB), MAIL from a real SMTP client gets 452 4.3.1 while a ballast file
leaves less than minFreeBytes free and 250 once it is gone, and the health port's /spool
says so each time with what it saw; a read-only or vanished spool gets 451 4.3.0 and
/spool says why."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import smtplib
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from smtpgate.connectors import config, specs
from smtpgate.receiver.backpressure import SPOOL_FULL, SPOOL_UNWRITABLE

from .conftest import free_port
from .helpers import expected, start_process

MIB = 1 << 20
SENDER, RECIPIENT = "sender@example.org", "user@contoso.com"
MESSAGE = b"Subject: spool\r\n\r\nroom?\r\n"


def mount_reason() -> str | None:
    """Why this machine cannot mount a tmpfs for a test, or None."""
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs for the spool"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "needs mount(8) and umount(8)"
    return None


@contextlib.contextmanager
def small_volume(path: pathlib.Path, size: str = "4m") -> Iterator[pathlib.Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the test's spool; skips where it cannot
    be mounted (no root, or a container without CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "smtpgate-test", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the spool: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def spool_config(
    folder: pathlib.Path, min_free_bytes: int = MIB, min_free_percent: int = 10, **hop: Any
) -> pathlib.Path:
    """A ServerConfig: one Internet connector on port 25 for contoso.com and a spooling next
    hop (Maildir unless ``hop`` says otherwise) with these back-pressure minimums."""
    server = specs.TransportServerSpec.model_validate(
        {
            "fqdn": "mail.contoso.com",
            "nextHop": {
                **hop,
                "storage": {"minFreeBytes": min_free_bytes, "minFreePercent": min_free_percent},
            },
        }
    )
    connector = specs.ReceiveConnectorSpec.model_validate(
        {"server": "ex01", "usage": "Internet", "bindings": ["0.0.0.0:25"]}
    )
    compiled = config.compile_server(
        "ex01",
        "mail",
        server,
        [("Internet", connector)],
        [specs.AcceptedDomainSpec(domain_name="contoso.com")],
    )
    path = folder / "config.json"
    path.write_text(compiled.config.to_json())
    return path


def spool_report(health: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{health}/spool", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        return dict(json.loads(response.read()))


def metrics(health: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{health}/metrics", timeout=10) as page:
        return str(page.read().decode())


def mail(port: int) -> tuple[int, str]:
    """MAIL FROM's answer (a transaction refused there sends nothing more)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example")
        code, text = client.mail(SENDER)
    return code, text.decode()


def send(port: int) -> bool:
    """Whether a whole message gets 250 after DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example")
        if client.mail(SENDER)[0] != 250 or client.rcpt(RECIPIENT)[0] != 250:
            return False
        return bool(client.data(MESSAGE)[0] == 250)


def until(check: Callable[[], Any], timeout: float = 10) -> Any:
    """``check()`` once it is truthy (the guard looks again once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def fill(volume: pathlib.Path, leave: int) -> pathlib.Path:
    """A ballast file that leaves about ``leave`` bytes of the volume free."""
    free = os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize
    ballast = volume / "ballast"
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))
    return ballast


def receiver(tmp: pathlib.Path, spool: pathlib.Path, cfg: pathlib.Path) -> tuple[Any, int, int]:
    port, health = free_port(), free_port()
    proc = start_process(
        tmp, port, "--spool", str(spool), "--health-port", str(health),
        "--health-host", "127.0.0.1", config=cfg,
    )  # fmt: skip
    return proc, port, health


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)
    assert proc.stdout is not None
    proc.stdout.close()


needs_mount = pytest.mark.skipif(mount_reason() is not None, reason=str(mount_reason()))


@needs_mount
@pytest.mark.parametrize("hop", [{"type": "Maildir"}, {"type": "Smtp", "mode": "StoreAndForward"}])
def test_mail_gets_452_and_spool_reports_full_while_the_volume_is_below_min_free_bytes(
    tmp_path: pathlib.Path, hop: dict[str, Any]
) -> None:
    if hop["type"] == "Smtp":
        hop = {**hop, "host": "127.0.0.1", "port": free_port()}  # nothing listens: queued
    with small_volume(tmp_path / "volume") as volume:
        proc, port, health = receiver(tmp_path, volume / "spool", spool_config(tmp_path, **hop))
        try:
            before = spool_report(health)
            assert before["refusing"] is False and before["reason"] == "SpoolHasRoom"
            assert before["sizeBytes"] == 4 * MIB and before["freeBytes"] > 3 * MIB
            assert (before["minFreeBytes"], before["minFreePercent"]) == (MIB, 10)
            assert send(port)

            ballast = fill(volume, leave=MIB // 2)
            assert until(lambda: mail(port) == expected(SPOOL_FULL))
            full = spool_report(health)
            assert full["refusing"] is True and full["reason"] == "SpoolFull"
            assert full["reply"] == SPOOL_FULL.line()
            assert full["freeBytes"] < MIB and full["freePercent"] < 25
            assert "smtpgate_spool_refusing 1.0" in metrics(health)

            ballast.unlink()  # space freed: mail is taken again
            assert until(lambda: send(port))
            after = spool_report(health)
            assert after["refusing"] is False and after["reason"] == "SpoolHasRoom"
            assert after["freeBytes"] > 3 * MIB
            assert "smtpgate_spool_refusing 0.0" in metrics(health)
        finally:
            stop(proc)


@needs_mount
def test_mail_gets_451_and_spool_reports_unwritable_while_the_volume_is_read_only(
    tmp_path: pathlib.Path,
) -> None:
    with small_volume(tmp_path / "volume") as volume:
        proc, port, health = receiver(tmp_path, volume / "spool", spool_config(tmp_path))
        try:
            assert send(port)
            subprocess.run(["mount", "-o", "remount,ro", str(volume)], check=True)
            assert until(lambda: mail(port) == expected(SPOOL_UNWRITABLE))
            report = spool_report(health)
            assert report["refusing"] is True and report["reason"] == "SpoolUnwritable"
            assert report["problem"] == "the spool volume is mounted read-only"
            assert report["reply"] == SPOOL_UNWRITABLE.line()

            subprocess.run(["mount", "-o", "remount,rw", str(volume)], check=True)
            assert until(lambda: send(port))
            assert spool_report(health)["reason"] == "SpoolHasRoom"
        finally:
            stop(proc)


def test_mail_gets_451_and_spool_reports_unwritable_while_the_spool_folder_is_gone(
    tmp_path: pathlib.Path,
) -> None:
    spool = tmp_path / "spool"
    proc, port, health = receiver(tmp_path, spool, spool_config(tmp_path, min_free_bytes=0))
    try:
        assert send(port)
        shutil.rmtree(spool)  # say, a volume unmounted under the pod
        assert until(lambda: mail(port) == expected(SPOOL_UNWRITABLE))
        report = spool_report(health)
        assert (report["reason"], report["problem"]) == (
            "SpoolUnwritable",
            "the spool folder is missing",
        )
        assert report["freeBytes"] is None
    finally:
        stop(proc)
