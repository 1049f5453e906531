"""Queue runners of several worker processes on one spool, against a next hop that answers
every try with 451: each message is tried on its own backoff, not once per worker. Two
``QueueRunner`` in one process stand for two workers (each opens the message for itself,
so their ``flock`` locks exclude each other as across processes). aiosmtpd stands for the
next hop: the test counts its tries, which a Postfix next hop would not show."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from smtpgate.connectors.specs import NextHop, QueueSettings
from smtpgate.receiver import backpressure, delivery, queue, relay, retries, spoolfile

from . import hops


class Deferring:
    """Answers 451 to every recipient and counts the tries."""

    def __init__(self) -> None:
        self.tries = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.tries += 1
        return "451 4.3.0 Try again later"


@pytest.fixture
def deferring_hop() -> Iterator[tuple[Deferring, int]]:
    hop = Deferring()
    with hops.serving(hop) as port:
        yield hop, port


def _spool(root: pathlib.Path) -> str:
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}.{delivery.new_queue_id()}.test"
    envelope = b"X-Smtpgate-Envelope: from=<s@example.org>; to=<u@contoso.com>\r\n"
    spoolfile.write_message(root, name, [envelope, b"Subject: q\r\n\r\nbody\r\n"])
    return name


def test_a_deferred_message_waits_its_backoff_in_every_worker_of_the_spool(
    tmp_path: pathlib.Path, deferring_hop: tuple[Deferring, int]
) -> None:
    hop, port = deferring_hop
    _spool(tmp_path)
    settings = QueueSettings(retry_seconds=60, max_retry_seconds=60)
    relays = [relay.RelayDelivery("127.0.0.1", port, helo="mail.contoso.com") for _ in "ab"]
    runners = [
        queue.QueueRunner(tmp_path, r, settings, "mail.contoso.com", scan_seconds=0.3)
        for r in relays
    ]
    for runner in runners:
        runner.start()
    try:
        time.sleep(3)  # ten scans of each worker
    finally:
        for runner in runners:
            runner.stop()
        for r in relays:
            r.close()
    assert hop.tries == 1


class Odd2xx:
    """Answers MAIL or RCPT with a 2xx other than 250 and takes nothing."""

    def __init__(self, stage: str) -> None:
        self.stage, self.data = stage, 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.stage == "MAIL":
            return "252 2.1.0 Cannot verify the sender"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        return "252 2.1.5 Cannot VRFY user, but will accept message"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data += 1
        return "250 OK"


@pytest.mark.parametrize("stage", ["MAIL", "RCPT"])
def test_a_recipient_is_settled_as_delivered_only_by_the_answer_to_data(stage: str) -> None:
    hop = Odd2xx(stage)
    answers = hops.attempt(hop, ("u@contoso.com",))
    assert hop.data == 0
    # Not "delivered": the queue would remove a message the next hop never had.
    assert [retries.outcome(code) for code, _ in answers] == [retries.Outcome.DEFERRED]


class Taking:
    """Takes every message."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 2.0.0 OK"


def test_mail_already_queued_goes_out_while_new_mail_gets_452_for_a_full_spool(
    tmp_path: pathlib.Path,
) -> None:
    hop = Taking()
    name = _spool(tmp_path)
    free = backpressure.usage(tmp_path).free
    with hops.serving(hop) as port:
        next_hop = NextHop.model_validate(
            {
                "type": "Smtp",
                "host": "127.0.0.1",
                "port": port,
                "mode": "StoreAndForward",
                "storage": {"minFreeBytes": free + (1 << 30)},  # more than the volume has
            }
        )
        queued = queue.QueuedDelivery(next_hop, str(tmp_path), helo="mail.contoso.com")
        try:
            assert queued.admit() == backpressure.SPOOL_FULL
            deadline = time.monotonic() + 10
            while (tmp_path / "new" / name).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            queued.close()
    assert not (tmp_path / "new" / name).exists()
    assert len(hop.messages) == 1


def test_a_scan_of_a_big_spool_comes_less_often_so_scanning_costs_little(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spool of 100,000 messages takes some 0.8 s of CPU to list and stat here; every
    # 5 s, that was a sixth of a core per worker for scanning alone. The listing stands
    # in for it: 0.1 s a scan.
    scans = []
    names = spoolfile.names

    def slow(root: pathlib.Path) -> list[tuple[str, str, float]]:
        scans.append(time.monotonic())
        time.sleep(0.1)
        return names(root)

    monkeypatch.setattr(spoolfile, "names", slow)
    runner = queue.QueueRunner(
        tmp_path,
        relay.RelayDelivery("127.0.0.1", 9, helo="mail.contoso.com"),
        QueueSettings(),
        "mail.contoso.com",
        scan_seconds=0.05,
    )
    runner.start()
    try:
        time.sleep(2)
    finally:
        runner.stop()
    # At most 1/queue.SCAN_SHARE of the time goes to scanning.
    assert len(scans) <= 2


def test_a_spool_file_the_queue_cannot_read_is_set_aside_in_bad_never_deleted(
    tmp_path: pathlib.Path,
) -> None:
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    garbage = b"Subject: no envelope line\r\n\r\nbody\r\n"
    (tmp_path / "new" / "1.Q.h").write_bytes(garbage)
    runner = queue.QueueRunner(
        tmp_path,
        relay.RelayDelivery("127.0.0.1", 9, helo="mail.contoso.com"),
        QueueSettings(),
        "mail.contoso.com",
        scan_seconds=0.1,
    )
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "bad" / "1.Q.h").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
    assert (tmp_path / "bad" / "1.Q.h").read_bytes() == garbage
    assert not (tmp_path / "new" / "1.Q.h").exists()
