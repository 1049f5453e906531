"""A receiver's memory is bounded by its connections, not by the size of the messages:
the receiver as a process, in a memory cgroup smaller than the messages sent to it at once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from smtpgate.connectors import config, specs

from .conftest import free_port
from .helpers import Raw, start_process

MIB = 1 << 20
LINE = b"x" * 76 + b"\r\n"
# Dot-stuffed on the wire, one dot in the message: the spool must hold it unstuffed.
DOTTED = b"..a line that starts with a dot\r\n"


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[pathlib.Path]:
    """A memory cgroup of ``limit`` bytes (cgroup v1 or v2), removed afterwards."""
    v1 = pathlib.Path("/sys/fs/cgroup/memory")
    v2 = pathlib.Path("/sys/fs/cgroup")
    name = f"smtpgate-test-{uuid.uuid4().hex[:8]}"
    controllers = v2 / "cgroup.controllers"
    if (v1 / "memory.limit_in_bytes").exists():
        folder, limit_file = v1 / name, "memory.limit_in_bytes"
    elif controllers.exists() and "memory" in controllers.read_text().split():
        folder, limit_file = v2 / name, "memory.max"
    else:
        pytest.skip("no memory cgroup controller here")
    try:
        folder.mkdir()
    except OSError as err:
        pytest.skip(f"cannot make a memory cgroup: {err}")
    try:
        try:
            (folder / limit_file).write_text(str(limit))
        except OSError as err:  # e.g. v2 without the memory controller for children
            pytest.skip(f"cannot limit a memory cgroup: {err}")
        yield folder
    finally:
        for _ in range(50):
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _oom_kills(folder: pathlib.Path) -> int:
    for name in ("memory.oom_control", "memory.events"):
        path = folder / name
        if path.exists():
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


def _config(folder: pathlib.Path) -> pathlib.Path:
    """An Internet connector that takes 20 connections from one source."""
    connector = specs.ReceiveConnectorSpec.model_validate(
        {
            "server": "ex01",
            "usage": "Internet",
            "bindings": ["0.0.0.0:25"],
            "tarpitIntervalSeconds": 0,
            "maxInboundConnectionPerSource": 50,
            "maxInboundConnectionPercentagePerSource": 100,
        }
    )
    compiled = config.compile_server(
        "ex01",
        "mail",
        specs.TransportServerSpec(fqdn="mail.contoso.com"),
        [("Internet", connector)],
        [specs.AcceptedDomainSpec(domain_name="contoso.com")],
    )
    path = folder / "config.json"
    path.write_text(compiled.config.to_json())
    return path


def _send(port: int, n: int, body: memoryview, replies: dict[int, int]) -> None:
    replies[n] = 0  # no reply: the connection failed
    try:
        raw = Raw(port)
    except OSError:
        return
    try:
        raw.reply()
        raw.command("EHLO client.example")
        raw.command("MAIL FROM:<s@example.org>")
        raw.command("RCPT TO:<u@contoso.com>")
        assert raw.command("DATA")[0] == 354
        raw.send(f"Subject: {n}\r\nMessage-Id: <{n}@example.org>\r\n\r\n".encode())
        for at in range(0, len(body), 1 << 20):
            raw.send(body[at : at + (1 << 20)])
        raw.send(b".\r\n")
        replies[n] = raw.reply()[0]
    except OSError:
        pass
    finally:
        raw.close()


def test_twenty_maximum_size_messages_at_once_fit_in_256_mib(tmp_path: pathlib.Path) -> None:
    size = 35 * MIB
    wire = DOTTED + LINE * ((size - len(DOTTED)) // len(LINE))
    stored_body = wire[1:]  # unstuffed
    port = free_port()
    with memory_cgroup(256 * MIB) as cgroup:
        enter = ("sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup))
        proc = start_process(tmp_path, port, config=_config(tmp_path), wrap=enter)
        try:
            replies: dict[int, int] = {}
            view = memoryview(wire)
            threads = [
                threading.Thread(target=_send, args=(port, n, view, replies)) for n in range(20)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
            assert proc.poll() is None, f"the receiver died: {proc.returncode}"
            assert _oom_kills(cgroup) == 0
            assert replies == {n: 250 for n in range(20)}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            assert proc.stdout is not None
            proc.stdout.close()
    files = sorted((tmp_path / "spool" / "new").iterdir())
    assert len(files) == 20
    expected = hashlib.sha256(stored_body).digest()
    subjects = set()
    for path in files:
        with path.open("rb") as handle:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += handle.readline()
            body = hashlib.sha256()
            while chunk := handle.read(MIB):
                body.update(chunk)
        assert head.startswith(b"X-Smtpgate-Envelope: from=<s@example.org>; to=<u@contoso.com>")
        assert b"\r\nReceived: from client.example" in head
        subjects.add(head.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0])
        assert body.digest() == expected
        assert os.stat(path).st_size == len(head) + len(stored_body)
    assert subjects == {str(n).encode() for n in range(20)}
