"""The benchmark's own tools still do what bench/ says: the in-process session meter runs
real sessions to their 250, and the floor server, with two workers on one port, makes
each message durable in new/ before its 250 (a real client, Python's smtplib, on
loopback), pipelined commands after the data included; the throughput bench's latency
client times every step of every session; the servers spool on an ext4 made for the
run."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import smtplib
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_session_cpu_runs_sessions_to_their_250() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "session_cpu.py"), "--sessions", "50"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    micros = float(out.split()[2])  # "this tree   235.8 µs CPU per session (1024 octets)"
    assert 0 < micros < 100_000


def test_the_floor_server_makes_each_message_durable_before_its_250(
    tmp_path: pathlib.Path,
) -> None:
    port, spool = _port(), tmp_path / "spool"
    proc = _floor(port, spool)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.example")
            for n in range(3):
                body = f"Subject: {n}\r\n\r\n.leading dot\r\nline {n}\r\n"
                client.sendmail("a@example.org", ["u@contoso.com"], body)
                stored = sorted(p.read_bytes() for p in (spool / "new").iterdir())
                assert len(stored) == n + 1
            assert not list((spool / "tmp").iterdir())
        assert b".leading dot\r\nline 2\r\n" in b"".join(stored)
        # The end of the data, then commands in the same packet: answered after the 250.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            reader = raw.makefile("rb")
            assert reader.readline().startswith(b"220")
            raw.sendall(
                b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRCPT TO:<u@contoso.com>\r\nDATA\r\n"
            )
            assert [reader.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
            raw.sendall(b"Subject: piped\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
            assert [reader.readline()[:3] for _ in range(3)] == [b"250", b"250", b"221"]
        assert len(list((spool / "new").iterdir())) == 4
        assert b"X-Smtpgate-Envelope: from=<a@example.org>; to=<u@contoso.com>" in b"".join(
            p.read_bytes() for p in (spool / "new").iterdir()
        )
        (worker,) = _children(proc.pid)
    finally:
        _stop(proc)  # and its second worker with it
    assert _ends(worker)


def test_the_floor_servers_workers_end_when_it_is_killed(tmp_path: pathlib.Path) -> None:
    proc = _floor(_port(), tmp_path, workers=3)
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2
    finally:
        _stop(proc, kill=True)  # no handler runs: the workers must notice by themselves
    assert all(_ends(pid) for pid in workers)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to place workers on")
def test_the_floor_places_its_workers_as_the_receiver_places_its_own(
    tmp_path: pathlib.Path,
) -> None:
    """A worker per CPU: each keeps to its own (the receiver's --cpu-affinity auto); more
    workers than CPUs: the kernel places them."""
    cpus = sorted(os.sched_getaffinity(0))
    proc = _floor(_port(), tmp_path / "one", workers=len(cpus))
    try:
        placed = sorted(sorted(os.sched_getaffinity(p)) for p in [proc.pid, *_children(proc.pid)])
    finally:
        _stop(proc)
    assert placed == [[cpu] for cpu in cpus]
    proc = _floor(_port(), tmp_path / "more", workers=len(cpus) + 1)
    try:
        placed = [os.sched_getaffinity(pid) for pid in [proc.pid, *_children(proc.pid)]]
    finally:
        _stop(proc)
    assert placed == [set(cpus)] * (len(cpus) + 1)


def test_the_latency_client_times_every_step_of_every_session(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/receiver_throughput.py's latency client: each step of each session, from the
    connection to QUIT's reply, and the table of their medians, a column per server."""
    sys.path.insert(0, str(ROOT / "bench"))
    import receiver_throughput as bench

    port, spool = _port(), tmp_path / "spool"
    proc = _floor(port, spool)
    try:
        began = time.perf_counter()
        steps = asyncio.run(bench._latency(port, 2, 6))
        wall = time.perf_counter() - began
    finally:
        _stop(proc)
    assert list(steps) == list(bench.STEPS)
    assert all(len(times) == 6 and min(times) > 0 for times in steps.values())
    assert sum(map(sum, steps.values())) <= 2 * wall  # two sessions at a time
    assert len(list((spool / "new").iterdir())) == 6
    # Every step is a round trip to the server and back: none is as short as a no-op.
    assert min(min(times) for times in steps.values()) > 5e-6

    doubled = {step: [2 * t for t in times] for step, times in steps.items()}
    bench.report_steps({"floor": steps, "twice": doubled})
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line[:2] == "| "]
    assert rows[0] == ["| step", "floor", "twice |"]
    assert [row[0][2:] for row in rows[1:]] == [*bench.STEPS, "sum of the medians"]
    medians = [sorted(steps[step])[3] for step in bench.STEPS]  # percentile(0.5) of six
    expected = [median * 1e6 for median in medians] + [sum(medians) * 1e6]
    for row, median in zip(rows[1:], expected, strict=True):
        assert row[1:] == [f"{median:.0f}", f"{2 * median:.0f} |"]


def _floor(port: int, spool: pathlib.Path, workers: int = 2) -> subprocess.Popen[bytes]:
    """bench/floor_server.py with ``workers`` processes on ``port``, ready."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "floor_server.py"),
            str(port),
            str(spool),
            str(workers),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    except BaseException:
        _stop(proc, kill=True)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes], kill: bool = False) -> None:
    if kill:
        proc.kill()
    else:
        proc.terminate()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    return [int(p) for p in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _ends(pid: int, timeout: float = 10) -> bool:
    """Whether process ``pid`` is gone (or a zombie nobody reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_the_spool_volume_is_an_ext4_whose_journal_orders_data_and_goes_afterwards() -> None:
    """bench/servers.spool_volume: every server's spool on an ext4 made for the run."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a loop device")
    sys.path.insert(0, str(ROOT / "bench"))
    import servers
    from smtpgate.receiver import delivery

    with servers.spool_volume("1G") as volume:
        mount = delivery.mount_of(volume)
        assert mount is not None and mount.point == str(volume) and mount.fstype == "ext4"
        assert delivery.orders_data(volume)
        assert "journal orders data" in servers.filesystem(volume)
        (volume / "written").write_text("x")
    assert not volume.exists()
    assert delivery.mount_of(volume) is None or delivery.mount_of(volume).point != str(volume)


@pytest.mark.skipif(shutil.which("smtp-source") is None, reason="needs Postfix (make postfix)")
def test_the_throughput_bench_warms_every_server_up_then_runs_its_rounds_to_the_table() -> None:
    """bench/receiver_throughput.py, one scenario, one round: the configuration of both
    servers (the receiver's worker placement with it), a warm-up of each that is not
    counted, each server's run (every message acknowledged was in its spool), the table."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "receiver_throughput.py"),
            "--quick",
            "--only",
            "c=1,",
            "--no-latency",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    lines = out.splitlines()
    sys.path.insert(0, str(ROOT / "bench"))
    import servers

    # The placement the receiver works out for the bench's workers, printed as it is.
    assert f"  workers: {servers.placement(servers.WORKERS)}" in lines, out
    for name in ("smtpgate maildir", "postfix smtpd + queue (fsync)"):
        warm = [line for line in lines if line.startswith(f"  warm-up {name} ")]
        assert len(warm) == 1 and "30 messages at c=1 and c=10" in warm[0], out
        counted = [line for line in lines if line.startswith(f"  round 1 {name} ")]
        assert len(counted) == 1 and "1 KB, c=1, new connection" in counted[0], out
        # Warmed up before the first counted run of any server.
        assert lines.index(warm[0]) < min(
            i for i, line in enumerate(lines) if line.startswith("  round 1 ")
        )
    assert any(line.startswith("| 1 KB, c=1, new connection | ") for line in lines), out
