"""The spool journal (``receiver/journal.py``): records come back in order after a crash,
a checkpoint frees the ones before it, the ring wraps and fills without losing one, a torn
record or bytes shaped like one inside a message are never taken for a record; and the
spool on top of it (``MaildirDelivery``): a message is in new/ at its 250, a worker killed
between a record and its checkpoint loses nothing and brings nothing back, and after a
restart of the machine the records write again the files a power loss took."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import signal
import smtplib
import subprocess
import sys
import textwrap
import time
import urllib.request
import zlib
from collections.abc import Iterator

import pytest
from smtpgate.connectors import specs
from smtpgate.receiver import delivery, drain, journal, queue

from .conftest import free_port
from .helpers import start_process
from .volumes import ext4_volume, unmount

KIB = 1024


def _records(count: int, first: int = 0, size: int = 100) -> list[tuple[str, list[bytes]]]:
    return [
        (f"name.{n}", [b"X-Envelope: %d\r\n" % n, bytes([65 + n % 26]) * (size + n)])
        for n in range(first, first + count)
    ]


def _reopened(old: journal.Journal) -> journal.Journal:
    """The journal as the next process finds it: ``old``'s lock gone with its file."""
    old.close()
    taken = journal.Journal.take(old.path)
    assert taken is not None
    return taken


def _contents(records: list[journal.Record]) -> list[tuple[str, bytes]]:
    return [(r.name, r.data) for r in records]


def _expected(records: list[tuple[str, list[bytes]]]) -> list[tuple[str, bytes]]:
    return [(name, b"".join(parts)) for name, parts in records]


def test_records_come_back_in_order_after_a_crash(tmp_path: pathlib.Path) -> None:
    log = journal.Journal.create(tmp_path / "0")
    written = _records(3) + _records(40, first=3)
    assert log.append(written[:3]) and log.append(written[3:])
    again = _reopened(log)
    records = again.recover()
    assert _contents(records) == _expected(written)
    assert [r.sequence for r in records] == list(range(1, 44))
    assert again.append(_records(1, first=99))  # the ring goes on after them
    assert _contents(_reopened(again).recover()) == _expected(written + _records(1, first=99))


def test_a_checkpoint_frees_the_records_before_it(tmp_path: pathlib.Path) -> None:
    log = journal.Journal.create(tmp_path / "0")
    assert log.append(_records(5))
    mark = log.mark()
    assert log.append(_records(2, first=5))
    log.checkpoint(mark)
    assert log.used() == 2 * journal.BLOCK
    assert _contents(_reopened(log).recover()) == _expected(_records(2, first=5))


def test_the_ring_wraps_and_keeps_only_the_records_since_the_checkpoint(
    tmp_path: pathlib.Path,
) -> None:
    """Each group is checkpointed only after the next is written, so the ring is never
    empty and its head goes round it: three laps."""
    log = journal.Journal.create(tmp_path / "0", limit=journal.MINIMUM_BYTES)
    blocks = (journal.MINIMUM_BYTES - journal.START) // journal.BLOCK
    number, wraps, mark = 0, 0, None
    batch: list[tuple[str, list[bytes]]] = []
    while wraps < 3:
        batch = _records(7, first=number, size=1000 + number * 37 % 6000)  # one or two blocks
        number += 7
        before = log.head
        assert log.append(batch), number
        wraps += log.head < before
        if mark is not None:
            log.checkpoint(mark)
        mark = log.mark()
    assert number > 3 * blocks // 2
    assert os.path.getsize(log.path) == journal.MINIMUM_BYTES  # grown to its limit, no more
    kept = _records(5, first=number)
    assert log.append(kept)
    assert _contents(_reopened(log).recover()) == _expected(batch + kept)


def test_a_full_ring_takes_no_more_and_loses_none(tmp_path: pathlib.Path) -> None:
    log = journal.Journal.create(tmp_path / "0", limit=journal.MINIMUM_BYTES)
    written: list[tuple[str, list[bytes]]] = []
    while True:
        batch = _records(4, first=len(written))
        if not log.append(batch):
            break
        written += batch
    blocks = (journal.MINIMUM_BYTES - journal.START) // journal.BLOCK
    assert blocks - 4 < len(written) <= blocks
    log.checkpoint(log.mark())
    assert log.append(_records(4, first=len(written)))  # room again
    log = _reopened(log)
    assert _contents(log.recover()) == _expected(_records(4, first=len(written)))
    # a record bigger than the whole ring is refused, not written
    assert not log.append([("huge", [bytes(journal.MINIMUM_BYTES)])])


def test_a_torn_last_record_ends_the_chain(tmp_path: pathlib.Path) -> None:
    log = journal.Journal.create(tmp_path / "0")
    written = _records(3)
    assert log.append(written)
    with open(log.path, "r+b") as raw:  # a write the power loss cut short: one octet off
        raw.seek(journal.START + 2 * journal.BLOCK + 60)
        octet = raw.read(1)
        raw.seek(-1, os.SEEK_CUR)
        raw.write(bytes([octet[0] ^ 0xFF]))
    assert _contents(_reopened(log).recover()) == _expected(written[:2])


def test_bytes_shaped_like_a_record_inside_a_message_are_never_one(
    tmp_path: pathlib.Path,
) -> None:
    """A client can send anything, a record of this journal's format included. Here the
    forgery even carries the file's salt and the next sequence number (which a client
    cannot know) at block boundaries of its message: recovery reads only where the chain
    puts a record, never inside one."""
    log = journal.Journal.create(tmp_path / "0")
    name, data = b"forged", b"X-Smtpgate-Envelope: from=<>; to=<victim@contoso.com>\r\n"
    header = journal._RECORD.pack(journal._RECORD_MAGIC, len(name), log.salt, 2, len(name + data))
    crc = zlib.crc32(data, zlib.crc32(name, zlib.crc32(header)))
    forged = header + name + data + journal._CRC.pack(crc)
    # The real record's header and name take the first octets of its block: the content
    # puts a forgery at each of the next three block boundaries.
    lead = journal._RECORD.size + len(b"carrier")
    content = b"".join(
        (forged + bytes(journal.BLOCK)).ljust(journal.BLOCK)[: journal.BLOCK] for _ in range(3)
    )
    carrier = ("carrier", [bytes(journal.BLOCK - lead), content])
    assert log.append([carrier])
    log.checkpoint(log.mark())  # the carrier is a file now: the chain starts after it
    records = _reopened(log).recover()
    assert records == []
    # Left where the chain looks (a record's place), a wrong salt is refused too.
    log = journal.Journal.create(tmp_path / "1")
    stranger = journal._RECORD.pack(journal._RECORD_MAGIC, 1, log.salt ^ 1, 1, 1)
    os.pwrite(
        log.fd,
        stranger + b"x" + journal._CRC.pack(zlib.crc32(b"x", zlib.crc32(stranger))),
        journal.START,
    )
    assert _reopened(log).recover() == []


def test_records_a_crash_left_after_a_torn_one_never_come_back_later(
    tmp_path: pathlib.Path,
) -> None:
    """A power loss in one write of two records can keep the second and tear the first:
    the chain ends before both. Once the journal is taken again with a new salt, the next
    record written where the torn one was is not followed by the stale second one."""
    log = journal.Journal.create(tmp_path / "0")
    assert log.append(_records(2))
    os.pwrite(log.fd, b"\xff", journal.START + 40)  # the first record torn
    log = _reopened(log)
    assert log.recover() == []
    log.renew()
    assert log.append(_records(1, first=7))
    assert _contents(_reopened(log).recover()) == _expected(_records(1, first=7))


def test_a_torn_header_slot_leaves_the_checkpoint_before_it(tmp_path: pathlib.Path) -> None:
    log = journal.Journal.create(tmp_path / "0")
    assert log.append(_records(2))
    log.checkpoint(log.mark())
    assert log.append(_records(2, first=2))
    log.checkpoint(log.mark())  # the newer slot: nothing left to replay
    newest = (log.generation % journal.SLOTS) * journal.BLOCK
    os.pwrite(log.fd, b"\0" * 8, newest + 8)
    # the older checkpoint counts: the two records after it come back (none lost)
    assert _contents(_reopened(log).recover()) == _expected(_records(2, first=2))


def test_a_journal_another_process_holds_or_still_makes_is_not_taken(
    tmp_path: pathlib.Path,
) -> None:
    log = journal.Journal.create(tmp_path / "0")
    assert journal.Journal.take(log.path) is None
    log.close()
    again = journal.Journal.take(log.path)
    assert again is not None
    again.close()
    (tmp_path / "made").write_bytes(b"")  # a making cut short: nothing in it, skipped
    assert journal.Journal.take(tmp_path / "made") is None
    (tmp_path / "junk").write_bytes(b"not a journal" * 1000)
    with pytest.raises(journal.NotAJournal, match="not a journal"):
        journal.Journal.take(tmp_path / "junk")


# -- the spool on top of it -----------------------------------------------------------


@pytest.fixture
def spool_root(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A spool on a filesystem the journal is used on: the test's folder if it is one,
    else an ext4 made for the test."""
    if delivery.journal_pays(tmp_path):
        yield tmp_path / "spool"
        return
    with ext4_volume(tmp_path / "volume") as volume:
        yield volume / "spool"


def _message(n: int) -> delivery.Message:
    return delivery.Message(
        queue_id=delivery.new_queue_id(),
        connector="Internet",
        mail_from=f"s{n}@example.org",
        recipients=(f"u{n}@contoso.com",),
        content=b"Message-ID: <%d@journal.test>\r\n\r\nbody %d\r\n" % (n, n),
    )


def test_a_message_is_in_new_at_its_250_and_told_once_durable_as_a_file(
    spool_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is in new/ at the 250; the queue (``on_commit``) hears of it only at the
    checkpoint that makes it durable as a file and frees its record."""
    monkeypatch.setattr(journal, "CHECKPOINT_SECONDS", 3600.0)  # taken by hand below
    spool = delivery.MaildirDelivery(spool_root)
    assert spool.journal is not None
    seen: list[list[str]] = []
    spool.on_commit = seen.append
    try:

        async def one() -> list[pathlib.Path]:
            await spool.deliver(_message(1))
            return list((spool_root / "new").iterdir())  # at once, at the 250

        files = asyncio.run(one())
        assert len(files) == 1 and b"<1@journal.test>" in files[0].read_bytes()
        assert seen == []
        report = spool.journal_report()
        assert report is not None
        assert (report["file"], report["appended"], report["records"]) == (
            "smtpgate-journal/0",
            1,
            1,
        )
        spool.journal.checkpoint()
        assert seen == [[files[0].name]]
        report = spool.journal_report()
        assert report is not None
        assert (report["records"], report["checkpoints"], report["failed"]) == (0, 1, None)
    finally:
        spool.close()


def test_no_journal_where_it_does_not_pay_or_is_turned_off(tmp_path: pathlib.Path) -> None:
    if not delivery.journal_pays(tmp_path):
        pytest.skip("the test's folder is not on ext4 or XFS")
    off = delivery.MaildirDelivery(tmp_path / "off", journal_bytes=0)
    assert off.journal is None and off.journal_report() is None
    assert not (tmp_path / "off" / journal.FOLDER).exists()
    proc_mounts = tmp_path / "proc"  # a made-up /proc: the spool on a tmpfs
    (proc_mounts / "self").mkdir(parents=True)
    st = os.stat(tmp_path)
    (proc_mounts / "self" / "mountinfo").write_text(
        f"1 0 {os.major(st.st_dev)}:{os.minor(st.st_dev)} / / rw - tmpfs tmpfs rw\n"
    )
    assert not delivery.journal_pays(tmp_path, proc_mounts)
    info = (proc_mounts / "self" / "mountinfo").read_text()
    (proc_mounts / "self" / "mountinfo").write_text(info.replace("tmpfs", "ext4"))
    assert delivery.journal_pays(tmp_path, proc_mounts)


def test_a_journal_that_fails_hands_its_groups_to_the_files_and_keeps_its_records(
    spool_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that reports a write error cannot be made here: the journal's fdatasync
    stands in for one by failing with EIO. The group goes the files' way under the names
    its records have, so the next spool finds them whole and writes nothing again; the
    journal, used no more, stays locked until the spool closes."""
    spool = delivery.MaildirDelivery(spool_root)
    assert spool.journal is not None
    fd, real = spool.journal.file.fd, os.fdatasync

    def failing(descriptor: int) -> None:
        if descriptor == fd:
            raise OSError(5, "Input/output error")
        real(descriptor)

    monkeypatch.setattr(journal.os, "fdatasync", failing)
    try:
        asyncio.run(spool.deliver(_message(1)))
        report = spool.journal_report()
        assert report is not None and report["failed"] == "[Errno 5] Input/output error"
        asyncio.run(spool.deliver(_message(2)))  # the files' way now
        report = spool.journal_report()
        assert report is not None and report["appended"] == 0
        assert journal.Journal.take(spool.journal.file.path) is None  # still held
    finally:
        spool.close()
    monkeypatch.undo()
    inodes = {p.name: p.stat().st_ino for p in (spool_root / "new").iterdir()}
    after = delivery.MaildirDelivery(spool_root)
    after.close()
    assert {p.name: p.stat().st_ino for p in (spool_root / "new").iterdir()} == inodes
    assert _ids(spool_root) == [1, 2]


def test_a_failed_checkpoint_frees_nothing_and_the_next_spool_keeps_the_files(
    spool_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that fails (EIO, standing in for a disk's write-back error) may have lost
    the files' data: trying again could report success for pages the kernel gave up on.
    The journal keeps the records and is used no more; the next spool checks every file
    against them."""
    spool = delivery.MaildirDelivery(spool_root)
    assert spool.journal is not None

    def failing(_: pathlib.Path) -> None:
        raise OSError(5, "Input/output error")

    try:
        asyncio.run(spool.deliver(_message(1)))
        with monkeypatch.context() as patch:
            patch.setattr(delivery, "_fsync_filesystem", failing)
            patch.setattr(delivery, "fsync_path", failing)
            spool.journal.checkpoint()
        report = spool.journal_report()
        assert report is not None and report["failed"] and report["records"] == 1
        asyncio.run(spool.deliver(_message(2)))
    finally:
        spool.close()
    sorted((spool_root / "new").iterdir())[0].write_bytes(b"")  # the first's data lost
    after = delivery.MaildirDelivery(spool_root)
    after.close()
    assert _ids(spool_root) == [1, 2]


# A worker that dies between records and their checkpoint: it delivers ``count`` messages
# with checkpoints too rare to happen, says "done", and waits to be killed.
DYING_WORKER = textwrap.dedent(
    """
    import asyncio, sys, time
    from smtpgate.receiver import delivery, journal
    journal.CHECKPOINT_SECONDS = 3600.0
    spool = delivery.MaildirDelivery(sys.argv[1])
    assert spool.journal is not None
    async def run():
        for n in range(int(sys.argv[2])):
            await spool.deliver(delivery.Message(
                queue_id=delivery.new_queue_id(), connector="Internet",
                mail_from="s@example.org", recipients=("u@contoso.com",),
                content=b"Message-ID: <%d@journal.test>\\r\\n\\r\\nbody\\r\\n" % n))
    asyncio.run(run())
    print("done", flush=True)
    time.sleep(3600)
    """
)


@contextlib.contextmanager
def _dying_worker(root: pathlib.Path, count: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DYING_WORKER, str(root), str(count)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"done"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _ids(root: pathlib.Path, folder: str = "new", skip_broken: bool = False) -> list[int]:
    """The messages in ``folder``, by the number in their Message-ID."""
    ids = []
    for path in (root / folder).iterdir():
        text = path.read_bytes()
        if skip_broken and b"@journal.test>" not in text:
            continue
        ids.append(int(text.split(b"Message-ID: <", 1)[1].split(b"@", 1)[0]))
    return sorted(ids)


def test_a_killed_workers_files_are_kept_as_they_are(spool_root: pathlib.Path) -> None:
    """Killed, the worker left every file it renamed in the page cache: the next spool on
    the folder takes its journal, finds every file whole, writes none again (the same
    inodes), syncs them and empties the journal."""
    with _dying_worker(spool_root, 6):
        pass  # killed with SIGKILL between its records and their checkpoint
    inodes = {p.name: p.stat().st_ino for p in (spool_root / "new").iterdir()}
    left = journal.Journal.take(spool_root / journal.FOLDER / "0")
    assert left is not None
    salt = left.salt
    left.close()
    spool = delivery.MaildirDelivery(spool_root)
    try:
        assert {p.name: p.stat().st_ino for p in (spool_root / "new").iterdir()} == inodes
        report = spool.journal_report()
        assert report is not None and report["file"] == "smtpgate-journal/0"
        assert spool.journal is not None and spool.journal.file.tail_sequence == 7  # emptied
        assert report["records"] == 0 and spool.journal.file.salt != salt  # renewed
    finally:
        spool.close()
    assert _ids(spool_root) == list(range(6))


def test_files_a_crash_lost_or_cut_short_are_written_again(spool_root: pathlib.Path) -> None:
    """What a crash of the machine or of the filesystem leaves of files not yet synced,
    made here by hand: a file gone, one empty, one a reader moved to cur/ and that lost
    its tail there. Each is written again into new/ from its record; one a reader moved
    to cur/ whole is left there; a leftover of the first write in tmp/ is no obstacle."""
    with _dying_worker(spool_root, 6):
        pass
    files = sorted((spool_root / "new").iterdir())
    files[0].unlink()
    (spool_root / "tmp" / files[0].name).write_bytes(b"half")
    files[1].rename(spool_root / "cur" / (files[1].name + ":2,S"))
    files[2].write_bytes(b"")
    short = spool_root / "cur" / (files[3].name + ":2,")
    files[3].rename(short)
    os.truncate(short, 10)
    delivery.MaildirDelivery(spool_root).close()
    assert _ids(spool_root) == [0, 2, 3, 4, 5]
    assert _ids(spool_root, "cur", skip_broken=True) == [1]
    assert list((spool_root / "tmp").iterdir()) == []


def test_a_power_loss_after_the_250_loses_no_message(tmp_path: pathlib.Path) -> None:
    """A power loss, on a real device: an ext4 whose own journal commits only every ten
    minutes (``commit=600``), so that the renames into new/ are not on the device yet when
    its image is copied (with O_DIRECT, what the device holds) right after the 250s. The
    copy, mounted, is the spool as the machine finds it after restarting."""
    if shutil.which("dd") is None or shutil.which("findmnt") is None:
        pytest.skip("needs dd and findmnt (coreutils, util-linux)")
    count = 8
    volume = tmp_path / "volume"
    with (
        ext4_volume(volume, options="commit=600", size="64M"),
        _dying_worker(volume / "spool", count),
    ):
        assert len(list((volume / "spool" / "new").iterdir())) == count
        device = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(volume)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(
            ["dd", f"if={device}", f"of={tmp_path / 'after.img'}", "bs=1M", "iflag=direct"],
            capture_output=True, check=True,
        )  # fmt: skip
    after = tmp_path / "after"
    after.mkdir()
    subprocess.run(["mount", "-o", "loop", str(tmp_path / "after.img"), str(after)], check=True)
    try:
        spool = after / "spool"
        survived = [p for p in (spool / "new").iterdir() if p.stat().st_size > 0]
        assert len(survived) < count, "the files reached the device: the test shows nothing"
        delivery.MaildirDelivery(spool).close()
        assert _ids(spool) == list(range(count))
    finally:
        unmount(after)
        (tmp_path / "after.img").unlink(missing_ok=True)


def test_the_receiver_reports_its_journal_and_can_go_without(tmp_path: pathlib.Path) -> None:
    if not delivery.journal_pays(tmp_path):
        pytest.skip("the test's folder is not on ext4 or XFS")
    for extra, journaled in (((), True), (("--spool-journal-mib", "0"), False)):
        folder = tmp_path / ("on" if journaled else "off")
        folder.mkdir()
        port, health = free_port(), free_port()
        proc = start_process(
            folder, port, "--health-port", str(health), "--health-host", "127.0.0.1", *extra
        )
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("s@example.org", ["u@contoso.com"], b"Subject: j\r\n\r\nx\r\n")
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/spool", timeout=10) as page:
                report = json.loads(page.read())["journal"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            assert proc.stdout is not None
            proc.stdout.close()
        if journaled:
            assert report["appended"] == 1 and report["file"].startswith("smtpgate-journal/")
        else:
            assert report is None
            assert not (folder / "spool" / journal.FOLDER).exists()


def test_the_drain_command_first_writes_back_what_the_journal_holds(
    spool_root: pathlib.Path,
) -> None:
    """A replica's claim drained after its node went down: the files the power loss took
    (removed here) are written back from the journal before the drain counts what the
    spool holds. Nothing listens at the next
    hop, so the drain gives up at once and says how many it still holds."""
    with _dying_worker(spool_root, 3):
        pass
    for path in (spool_root / "new").iterdir():
        path.unlink()
    hop = f"smtp://127.0.0.1:{free_port()}"
    assert drain.main(["--spool", str(spool_root), "--next-hop", hop, "--wait", "0"]) == 1
    assert _ids(spool_root) == [0, 1, 2]


def test_a_new_journal_starts_small_and_grows_zero_filled_up_to_its_limit(
    tmp_path: pathlib.Path,
) -> None:
    log = journal.Journal.create(tmp_path / "0", limit=journal.MINIMUM_BYTES)
    assert os.path.getsize(log.path) == journal.INITIAL_BYTES
    sizes = []
    while log.append(_records(1, first=len(sizes))):
        sizes.append(os.path.getsize(log.path))
    assert sorted(set(sizes)) == [
        journal.INITIAL_BYTES,
        2 * journal.INITIAL_BYTES,
        journal.MINIMUM_BYTES,
    ]
    with open(log.path, "rb") as raw:  # what no record holds is zeros, written
        raw.seek(journal.START + len(sizes) * journal.BLOCK)
        assert raw.read() == bytes(
            journal.MINIMUM_BYTES - journal.START - len(sizes) * journal.BLOCK
        )


def test_a_journal_half_full_is_checkpointed_at_once(
    spool_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interval is an hour here: only a journal past half its limit brings the
    checkpoint forward."""
    monkeypatch.setattr(journal, "CHECKPOINT_SECONDS", 3600.0)
    spool = delivery.MaildirDelivery(spool_root, journal_bytes=journal.MINIMUM_BYTES)
    assert spool.journal is not None
    try:
        file = spool.journal.file

        async def until_half_full() -> None:
            sent = 0
            while file.used() * 2 <= file.limit:
                await spool.deliver(_message(sent))
                sent += 1

        asyncio.run(until_half_full())
        deadline = time.monotonic() + 10
        while file.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert file.checkpoints == 1
    finally:
        spool.close()


def test_a_store_and_forward_spool_has_no_journal(spool_root: pathlib.Path) -> None:
    """Its queue takes a message from new/ at once: only files durable in their own
    right, never ones a journal's recovery might write again."""
    hop = specs.NextHop.model_validate(
        {"type": "Smtp", "host": "127.0.0.1", "port": free_port(), "mode": "StoreAndForward"}
    )
    queued = queue.QueuedDelivery(hop, str(spool_root), helo="mail.contoso.com")
    try:
        assert queued.spool.journal is None and queued.spool.journal_report() is None
        assert not (spool_root / journal.FOLDER).exists()
    finally:
        queued.close()
