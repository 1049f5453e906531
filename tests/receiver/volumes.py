"""Filesystems made for a test: a small ext4 in a file, mounted on a loop device."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def ext4_volume(
    path: pathlib.Path, *mkfs: str, options: str | None = None, size: str = "1G"
) -> Iterator[pathlib.Path]:
    """An ext4 of ``size`` made with ``mkfs`` (e.g. ``-O ^has_journal``) in a file beside
    ``path`` and mounted at ``path`` with ``options`` (e.g. ``data=writeback``); skips
    where this machine cannot (no root, no mkfs.ext4 or losetup, no loop devices)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a loop device")
    for tool in ("mkfs.ext4", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (e2fsprogs, util-linux)")
    image = path.with_name(path.name + ".img")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", *mkfs, str(image)], check=True)
    mount = ["mount", "-o", ",".join(["loop", *([options] if options else [])])]
    done = subprocess.run(
        [*mount, str(image), str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        image.unlink(missing_ok=True)
        pytest.skip(f"cannot mount an ext4 on a loop device: {done.stderr.strip()}")
    try:
        yield path
    finally:
        unmount(path)
        image.unlink(missing_ok=True)


def unmount(path: pathlib.Path) -> None:
    """Unmount ``path``, waiting a little for what still uses it (a process the test
    stopped, still ending); then detached lazily, so no mount or loop device stays."""
    for _ in range(20):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
