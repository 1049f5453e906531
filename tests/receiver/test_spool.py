"""The maildir spool's group commit: what it writes, that concurrent messages share a
commit, and that a failed commit answers every message of its group with an error and
leaves nothing of them behind."""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import shutil
import threading
import time
from typing import Any

import pytest
from smtpgate.connectors import specs
from smtpgate.receiver import delivery

from .helpers import Raw


def _message(n: int, size: int = 100) -> delivery.Message:
    return delivery.Message(
        queue_id=delivery.new_queue_id(),
        connector="Internet",
        mail_from=f"s{n}@example.org",
        recipients=(f"u{n}@contoso.com", "v@contoso.com"),
        content=f"Subject: {n}\r\n\r\n".encode() + bytes([65 + n % 26]) * size,
    )


def _deliver_all(spool: delivery.MaildirDelivery, messages: list[delivery.Message]) -> list[Any]:
    async def run() -> list[Any]:
        return await asyncio.gather(*(spool.deliver(m) for m in messages), return_exceptions=True)

    try:
        return asyncio.run(run())
    finally:
        spool.close()


SYNCS = [("filesystem", True), ("filesystem", False), ("file", None)]
SYNC_IDS = ["one-journal-commit", "syncfs-then-directory", "file"]


@pytest.mark.parametrize(("sync", "ordered"), SYNCS, ids=SYNC_IDS)
def test_concurrent_messages_land_whole_and_share_commits(
    tmp_path: pathlib.Path, sync: str, ordered: bool | None
) -> None:
    spool = delivery.MaildirDelivery(tmp_path, sync=sync, ordered=ordered)
    assert spool.ordered is bool(ordered)
    messages = [_message(n, size=n * 977) for n in range(300)]
    assert _deliver_all(spool, messages) == [None] * 300
    files = sorted((tmp_path / "new").iterdir())
    assert list((tmp_path / "tmp").iterdir()) == []
    stored = {p.read_bytes() for p in files}
    expected = {
        (
            f"X-Smtpgate-Envelope: from=<{m.mail_from}>; "
            f"to=<{m.recipients[0]}>,<{m.recipients[1]}>\r\n"
        ).encode()
        + m.content
        for m in messages
    }
    assert stored == expected
    assert {p.name.split(".")[1] for p in files} == {m.queue_id for m in messages}
    assert 1 <= spool.groups < 300  # messages waiting together were committed together


def test_messages_that_cannot_be_staged_get_an_error(tmp_path: pathlib.Path) -> None:
    spool = delivery.MaildirDelivery(tmp_path)
    shutil.rmtree(tmp_path / "tmp")  # staging fails: ENOENT
    results = _deliver_all(spool, [_message(0), _message(1)])
    assert all(isinstance(r, delivery.DeliveryError) for r in results)
    assert "No such file or directory" in str(results[0])
    assert list((tmp_path / "new").iterdir()) == []


@pytest.mark.parametrize(("sync", "ordered"), SYNCS, ids=SYNC_IDS)
@pytest.mark.parametrize("failing_step", ["data", "directory"])
def test_a_failed_commit_fails_its_whole_group_and_leaves_nothing(
    tmp_path: pathlib.Path,
    sync: str,
    ordered: bool | None,
    failing_step: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A disk that reports a write-back error cannot be made here: the step stands in for
    # one by failing with EIO, as sync_file_range(2), syncfs(2) or fsync(2) would.
    def failing(*_: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    if failing_step == "data":
        monkeypatch.setattr(delivery, "_write_back", failing)
        monkeypatch.setattr(delivery, "_fsync_filesystem", failing)
        if sync == "file":
            monkeypatch.setattr(delivery.os, "fsync", failing)
    else:
        monkeypatch.setattr(delivery.MaildirDelivery, "_sync_new", failing)
    spool = delivery.MaildirDelivery(tmp_path, sync=sync, ordered=ordered, journal_bytes=0)
    results = _deliver_all(spool, [_message(n) for n in range(20)])
    assert all(isinstance(r, delivery.DeliveryError) for r in results)
    assert "Input/output error" in str(results[0])
    assert list((tmp_path / "new").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_an_unknown_sync_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="filesystem or file"):
        delivery.MaildirDelivery(tmp_path, sync="sometimes")


def test_a_spool_that_cannot_be_written_gives_451_never_250(start: Any) -> None:
    running = start(
        [
            (
                "Internet",
                {"usage": "Internet", "bindings": ["0.0.0.0:25"], "tarpitIntervalSeconds": 0},
            )
        ]
    )
    raw = Raw(running.port(25))
    raw.reply()
    raw.command("EHLO client.example")
    raw.command("MAIL FROM:<s@example.org>")
    assert raw.command("RCPT TO:<u@contoso.com>")[0] == 250
    # Gone after MAIL looked (before, MAIL itself gets 451: test_spool_health.py).
    shutil.rmtree(running.spool / "tmp")
    assert raw.command("DATA")[0] == 354
    raw.send(b"Subject: lost?\r\n\r\nbody\r\n.\r\n")
    code, text = raw.reply()
    assert code == 451, text
    (running.spool / "tmp").mkdir()
    raw.command("MAIL FROM:<s@example.org>")
    raw.command("RCPT TO:<u@contoso.com>")
    raw.command("DATA")
    raw.send(b"Subject: retried\r\n\r\nbody\r\n.\r\n")
    assert raw.reply()[0] == 250
    assert [m.count(b"Subject: retried") for m in running.messages()] == [1]


def test_the_next_hop_chooses_how_the_spool_syncs(tmp_path: pathlib.Path) -> None:
    by_file = specs.NextHop(path=str(tmp_path), sync="File")
    assert delivery.from_next_hop(by_file).sync == "file"  # type: ignore[attr-defined]
    assert delivery.from_next_hop(specs.NextHop(path=str(tmp_path))).sync == "filesystem"  # type: ignore[attr-defined]
    overridden = delivery.from_next_hop(by_file, spool_sync="filesystem")
    assert overridden.sync == "filesystem"  # type: ignore[attr-defined]


def test_files_a_killed_receiver_left_in_tmp_are_cleared_after_36_hours(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "tmp").mkdir()
    old, recent = tmp_path / "tmp" / "old", tmp_path / "tmp" / "recent"
    old.write_bytes(b"half a message")
    recent.write_bytes(b"another worker's message being written")
    long_ago = time.time() - 37 * 3600
    os.utime(old, (long_ago, long_ago))
    delivery.MaildirDelivery(tmp_path).close()
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["recent"]


def test_a_lone_message_commits_on_the_event_loop_and_concurrent_ones_on_the_committer(
    tmp_path: pathlib.Path,
) -> None:
    def spool() -> tuple[delivery.MaildirDelivery, list[tuple[str, int]]]:
        made = delivery.MaildirDelivery(tmp_path)
        made.alone = lambda: True  # the server says: this loop serves one session only
        commits: list[tuple[str, int]] = []
        commit = made._commit

        def recorded(group: list[Any], settle: bool = True) -> None:
            commits.append((threading.current_thread().name, len(group)))
            commit(group, settle)

        made._commit = recorded  # type: ignore[method-assign]
        return made, commits

    lone, commits = spool()
    assert _deliver_all(lone, [_message(0)]) == [None]
    assert commits == [("MainThread", 1)]  # no thread was woken for it
    several, commits = spool()
    several.alone = lambda: False  # the server says: the loop serves others too
    assert _deliver_all(several, [_message(n) for n in range(1, 6)]) == [None] * 5
    assert {name for name, _ in commits} == {"spool-commit"}
    assert sum(size for _, size in commits) == 5
    assert len(list((tmp_path / "new").iterdir())) == 6


def test_the_server_tells_the_spool_when_its_loop_serves_one_session(
    tmp_path: pathlib.Path,
) -> None:
    from smtpgate.receiver import server

    from .helpers import internet_config_file

    config = server.ServerConfig.from_json(internet_config_file(tmp_path).read_bytes())
    runtime = server.Runtime(config, delivery.MaildirDelivery(tmp_path / "spool"))
    spool = runtime.delivery
    assert isinstance(spool, delivery.MaildirDelivery)
    assert spool.alone()
    runtime.sessions.update({object(), object()})  # type: ignore[arg-type]
    assert not spool.alone()
    spool.close()


def test_the_receivers_loop_lets_the_committer_have_the_gil_within_its_switch_interval() -> None:
    import sys

    from smtpgate.receiver import server

    before = sys.getswitchinterval()
    try:
        server.new_event_loop().close()
        assert sys.getswitchinterval() == pytest.approx(server.SWITCH_INTERVAL)
        assert server.SWITCH_INTERVAL <= 0.0005
    finally:
        sys.setswitchinterval(before)


def test_a_message_written_short_is_written_on_to_its_end(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A regular file takes a whole writev here; a short one (a signal, a nearly full disk)
    # is made by writing only the envelope and returning its length.
    def short(fd: int, parts: tuple[bytes, ...]) -> int:
        return os.write(fd, parts[0])

    monkeypatch.setattr(delivery.os, "writev", short)
    spool = delivery.MaildirDelivery(tmp_path)
    message = _message(1, size=70_000)
    assert _deliver_all(spool, [message]) == [None]
    (stored,) = [p.read_bytes() for p in (tmp_path / "new").iterdir()]
    assert stored.endswith(b"\r\n" + message.content)
    assert stored.startswith(b"X-Smtpgate-Envelope: from=<s1@example.org>")
