"""Back pressure: MAIL gets 452 4.3.1 while the spool's volume is nearly full, before a
full disk would turn a whole DATA into 451."""

from __future__ import annotations

import pathlib
import smtplib

import pytest
from smtpgate.connectors import config
from smtpgate.receiver import backpressure
from smtpgate.receiver.backpressure import SPOOL_FULL, Usage

from .conftest import free_port
from .helpers import expected, start_process
from .test_queue import SENDER, queue_config

GB = 1 << 30


@pytest.mark.parametrize(
    ("usage", "percent", "floor", "answer"),
    [
        (Usage(100 * GB, 50 * GB, 1000, 500), 5, 64 << 20, None),
        (Usage(100 * GB, 4 * GB, 1000, 500), 5, 64 << 20, SPOOL_FULL),  # space below 5%
        (Usage(100 * GB, 50 * GB, 1000, 40), 5, 64 << 20, SPOOL_FULL),  # inodes below 5%
        (Usage(GB, 60 << 20, 1000, 500), 5, 64 << 20, SPOOL_FULL),  # 5.9% free but < 64Mi
        (Usage(100 * GB, 4 * GB, 1000, 40), 0, 0, None),  # both checks off
        (Usage(100 * GB, 4 * GB, 0, 0), 0, GB, None),  # no inode count (some filesystems)
    ],
)
def test_the_spool_is_full_below_either_threshold(
    usage: Usage, percent: int, floor: int, answer: object
) -> None:
    assert backpressure.decide(usage, percent, floor) == answer


@pytest.mark.parametrize("mode", ["StoreAndForward", "Maildir"])
def test_mail_gets_452_while_the_spool_volume_is_nearly_full(
    tmp_path: pathlib.Path, mode: str
) -> None:
    path = queue_config(tmp_path, free_port())  # nothing listens there: not needed here
    data = config.ServerConfig.from_json(path.read_bytes())
    hop = data.next_hop
    if mode == "Maildir":
        hop = hop.model_validate({"type": "Maildir"})
    # Ask for more free space than this machine's volume has: no disk is filled.
    free = backpressure.usage(tmp_path)
    wanted = free.free + GB
    hop = hop.model_copy(
        update={"storage": hop.storage.model_copy(update={"min_free_bytes": wanted})}
    )
    path.write_text(data.model_copy(update={"next_hop": hop}).to_json())
    port = free_port()
    proc = start_process(tmp_path, port, config=path)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.example")
            code, text = client.mail(SENDER)
    finally:
        proc.terminate()
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert (code, text.decode()) == expected(SPOOL_FULL)
