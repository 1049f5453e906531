"""Where the spool's group commit may take one journal commit (``delivery.orders_data``):
only where the filesystem's journal commits a rename together with the data written
before it. On filesystems made for the test: ext4 with a journal in data=ordered or
data=journal mode does; ext4 made without a journal, or mounted data=writeback, does not,
and there the spool makes the data durable before the renames (two commits). The
receiver's /spool says which."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest
from smtpgate.receiver import delivery

from .test_spool_health import receiver, send, spool_config, spool_report, stop
from .volumes import ext4_volume


def _spool_three(root: pathlib.Path) -> delivery.MaildirDelivery:
    spool = delivery.MaildirDelivery(root)
    messages = [
        delivery.Message(
            queue_id=delivery.new_queue_id(),
            connector="Internet",
            mail_from="s@example.org",
            recipients=("u@contoso.com",),
            content=b"Subject: %d\r\n\r\nbody\r\n" % n,
        )
        for n in range(3)
    ]

    async def run() -> None:
        await asyncio.gather(*(spool.deliver(m) for m in messages))

    try:
        asyncio.run(run())
    finally:
        spool.close()
    assert len(list((root / "new").iterdir())) == 3
    return spool


@pytest.mark.parametrize(
    ("mkfs", "options", "ordered"),
    [
        ((), None, True),
        ((), "data=journal", True),
        (("-O", "^has_journal"), None, False),
        ((), "data=writeback", False),
    ],
    ids=["journal-ordered", "journal-data", "no-journal", "journal-writeback"],
)
def test_one_commit_only_where_the_journal_orders_data(
    tmp_path: pathlib.Path, mkfs: tuple[str, ...], options: str | None, ordered: bool
) -> None:
    with ext4_volume(tmp_path / "volume", *mkfs, options=options) as volume:
        assert delivery.orders_data(volume / "spool") is ordered
        assert _spool_three(volume / "spool").ordered is ordered


def _device(path: pathlib.Path) -> str:
    device = os.stat(path).st_dev
    return f"{os.major(device)}:{os.minor(device)}"


def _proc(
    tmp_path: pathlib.Path, fstype: str, options: str | None, point: str = "/", device: str = ""
) -> tuple[pathlib.Path, pathlib.Path]:
    """A /proc and a /sys that say: ``point`` is a mount of ``fstype`` on ``device`` (by
    default the test folder's own), named vdz, whose ext4 options are ``options`` (None:
    no options file)."""
    device = device or _device(tmp_path)
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    escaped = point.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    (proc / "self" / "mountinfo").write_text(
        "21 1 0:99 / / rw - rootfs rootfs rw\n"
        f"22 21 {device} / {escaped} rw,relatime - {fstype} /dev/vdz rw\n"
        "30 21 0:21 / /proc rw - proc proc rw\n"
    )
    (sys_root / "dev" / "block").mkdir(parents=True)
    os.symlink("../../devices/virtual/block/vdz", sys_root / "dev" / "block" / device)
    if options is not None:
        (proc / "fs" / "ext4" / "vdz").mkdir(parents=True)
        (proc / "fs" / "ext4" / "vdz" / "options").write_text(options)
    return proc, sys_root


@pytest.mark.parametrize(
    ("fstype", "options", "ordered"),
    [
        ("ext4", "rw\nbarrier\ndata=ordered\n", True),
        ("ext4", "rw\ndata=journal\n", True),
        ("ext4", "rw\ndata=writeback\n", False),
        ("ext4", "rw\nbarrier\ndelalloc\n", False),  # made without a journal
        ("ext4", None, False),  # its options cannot be read
        ("xfs", None, True),
        ("btrfs", None, False),
        ("tmpfs", None, False),
    ],
)
def test_orders_data_reads_the_mount_and_its_ext4_options(
    tmp_path: pathlib.Path, fstype: str, options: str | None, ordered: bool
) -> None:
    proc, sys_root = _proc(tmp_path, fstype, options)
    spool = tmp_path / "spool" / "not-made-yet"
    assert delivery.orders_data(spool, proc, sys_root) is ordered
    assert delivery.orders_data(pathlib.Path("/proc/1"), proc, sys_root) is False
    assert delivery.orders_data(spool, tmp_path / "no-proc", sys_root) is False


def test_a_mount_point_with_a_space_tab_or_backslash_is_found(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "sp ool\tx\\y"
    folder.mkdir()
    proc, sys_root = _proc(tmp_path, "ext4", "data=ordered\n", point=str(folder))
    found = delivery.mount_of(folder / "new", proc)
    assert found is not None and found.point == str(folder) and found.fstype == "ext4"
    assert delivery.orders_data(folder / "new", proc, sys_root)


def test_a_listed_mount_whose_device_the_path_is_not_on_does_not_count(
    tmp_path: pathlib.Path,
) -> None:
    """A mount hidden by a later one above it is still listed: the device decides."""
    proc, sys_root = _proc(tmp_path, "ext4", "data=ordered\n", device="7:77")
    assert delivery.orders_data(tmp_path / "spool", proc, sys_root) is False


@pytest.mark.parametrize(
    ("mkfs", "sync", "commit"),
    [
        ((), "Filesystem", "OneJournalCommit"),
        (("-O", "^has_journal"), "Filesystem", "SyncfsThenDirectory"),
        ((), "File", "FsyncEachFile"),
    ],
)
def test_the_receiver_says_on_its_spool_port_how_it_commits(
    tmp_path: pathlib.Path, mkfs: tuple[str, ...], sync: str, commit: str
) -> None:
    """/spool names the way the receiver makes a group durable on the volume it has."""
    with ext4_volume(tmp_path / "volume", *mkfs) as volume:
        cfg = spool_config(tmp_path, sync=sync)
        proc, port, health = receiver(tmp_path, volume / "spool", cfg)
        try:
            assert send(port)
            assert spool_report(health)["groupCommit"] == commit
        finally:
            stop(proc)
