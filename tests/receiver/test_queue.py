"""Store and forward with Postfix's smtpd as the next hop: the receiver keeps taking mail
while the next hop is away and delivers every message once when it is back; a SIGKILL
loses nothing; a refusal goes back to the sender as a delivery status notification."""

from __future__ import annotations

import email.message
import json
import os
import pathlib
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from smtpgate.connectors import config, specs

from . import postfix_hop
from .conftest import free_port
from .helpers import start_process

pytestmark = pytest.mark.skipif(postfix_hop.available() is not None, reason="needs Postfix")

SENDER = "sender@example.org"


def queue_config(folder: pathlib.Path, port: int, **queue: Any) -> pathlib.Path:
    """A ServerConfig: one Internet connector on port 25 for contoso.com, and a
    StoreAndForward next hop on 127.0.0.1:``port`` retrying every second or two."""
    server = specs.TransportServerSpec.model_validate(
        {
            "fqdn": "mail.contoso.com",
            "nextHop": {
                "type": "Smtp",
                "host": "127.0.0.1",
                "port": port,
                "mode": "StoreAndForward",
                "queue": {"retrySeconds": 1, "maxRetrySeconds": 2, **queue},
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


@pytest.fixture
def hop() -> Iterator[postfix_hop.PostfixHop]:
    # Postfix's daemons run as the postfix user, who may not enter pytest's 0700 folders.
    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-hop-"))
    hop = postfix_hop.PostfixHop(work)
    hop.start()
    yield hop
    hop.stop()
    if not os.environ.get("KEEP_HOP"):
        shutil.rmtree(work, ignore_errors=True)


def test_the_postfix_next_hop_starts_again_after_a_stop_cut_a_queue_file_short(
    hop: postfix_hop.PostfixHop,
) -> None:
    """The outage tests stop the next hop under load, which can leave in incoming/ a queue
    file its cleanup was writing; ``postfix start`` then has postsuper say so in the log."""
    hop.stop()
    (hop.work / "postfix-queue" / "incoming" / "854575.31995").write_text("")
    hop.start()
    log = (hop.work / "postfix.log").read_text(errors="replace")
    assert "bogus file name: incoming/854575.31995" in log


def _receiver(tmp: pathlib.Path, hop: postfix_hop.PostfixHop, port: int, *extra: str) -> Any:
    log = open(tmp / "receiver.log", "ab")  # noqa: SIM115 - closed with the process
    proc = start_process(
        tmp,
        port,
        "--log-level",
        "DEBUG",
        *extra,
        config=queue_config(tmp, hop.port),
        stderr=log,
    )
    log.close()
    return proc


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return str(response.read().decode())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)
    if proc.stdout is not None:
        proc.stdout.close()


def _message(message_id: str, to: str = "user@contoso.com") -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <{to}>\r\nMessage-ID: {message_id}\r\n"
        f"Subject: queued\r\n\r\n{'x' * 300}\r\n"
    ).encode()


def _spool_empty(spool: pathlib.Path) -> bool:
    return not any(
        not p.name.startswith(".") for folder in ("new", "cur") for p in (spool / folder).iterdir()
    )


def _wait(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def _ids(messages: list[email.message.Message]) -> Counter[str]:
    return Counter(str(m["Message-ID"]) for m in messages if m["Message-ID"])


class Load:
    """Clients sending messages (one connection each) until stopped; ``acked`` holds the
    Message-IDs the receiver answered 250."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port, self.acked, self.refused = port, [], 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._count = iter(range(10**9))
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message_id = f"<{next(self._count)}@queue.test>"
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                    client.sendmail(SENDER, ["user@contoso.com"], _message(message_id))
            except (OSError, smtplib.SMTPException):
                with self._lock:
                    self.refused += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.acked.append(message_id)
            time.sleep(0.01)

    def stop(self) -> list[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)
        return list(self.acked)


def test_a_next_hop_outage_delays_but_every_accepted_message_arrives_once(
    tmp_path: pathlib.Path, hop: postfix_hop.PostfixHop
) -> None:
    port = free_port()
    health = free_port()
    proc = _receiver(tmp_path, hop, port, "--workers", "2", "--health-port", str(health))
    try:
        load = Load(port)
        time.sleep(2)
        stopped = time.time()
        hop.stop()
        during = len(load.acked)
        time.sleep(6)  # the next hop is away: the receiver keeps answering 250
        assert len(load.acked) > during + 20, (during, len(load.acked), load.refused)
        assert not _spool_empty(tmp_path / "spool")
        time.sleep(5)  # a scan of the spool by the worker that answers /metrics
        metrics = _get(health, "/metrics")
        assert 'smtpgate_queue_deferred_total{reason="unavailable"}' in metrics
        (queued,) = [
            line for line in metrics.splitlines() if line.startswith("smtpgate_queue_messages")
        ]
        assert float(queued.split()[-1]) > 0
        hop.start()
        time.sleep(2)
        acked = load.stop()
        assert load.refused == 0
        _wait(lambda: _spool_empty(tmp_path / "spool"), 60, "the spool did not drain")
        delivered = _ids(hop.wait_delivered(len(acked), 60))
        assert len(acked) > 100
        assert set(acked) <= set(delivered)
        # Twice only what Postfix had taken when it was stopped, before its answer reached
        # the receiver (RFC 1047's lost acknowledgement): its first copy went into Postfix's
        # queue in the moment of the stop.
        twice = [i for i, n in delivered.items() if n > 1]
        assert all(n <= 2 for n in delivered.values())
        for message_id in twice:
            first = min(hop.accepted_at(message_id))
            assert stopped - 2 <= first <= stopped + 2, (message_id, first, stopped)
        assert sum(delivered.values()) == len(acked) + len(twice)
    finally:
        _stop(proc)


def test_sigkill_mid_delivery_loses_nothing_and_repeats_only_what_the_next_hop_had(
    tmp_path: pathlib.Path, hop: postfix_hop.PostfixHop
) -> None:
    port, kills, killed = free_port(), 4, []
    proc = _receiver(tmp_path, hop, port)
    load = Load(port)
    try:
        for _ in range(kills):
            time.sleep(1.5)
            killed.append(time.time())
            proc.send_signal(signal.SIGKILL)  # with deliveries under way
            _stop(proc)
            proc = _receiver(tmp_path, hop, port)
        time.sleep(1)
        acked = load.stop()
        _wait(lambda: _spool_empty(tmp_path / "spool"), 60, "the spool did not drain")
        delivered = _ids(hop.wait_delivered(len(acked), 60))
    finally:
        load.stop()
        _stop(proc)
    assert len(acked) > 100
    assert set(acked) <= set(delivered), "an acknowledged message was lost"
    twice = [i for i, n in delivered.items() if n > 1]
    # A message goes twice only when the next hop took it in the moment before a kill,
    # before the receiver removed it: at most what one process had under way per kill,
    # and its first copy went into Postfix's queue then.
    concurrency = specs.QueueSettings().concurrency
    assert len(twice) <= kills * concurrency, twice
    assert all(n == 2 for n in delivered.values() if n > 1)
    for message_id in twice:
        first = min(hop.accepted_at(message_id))
        assert any(kill - 2 <= first <= kill + 1 for kill in killed), (message_id, first)


def test_a_refused_recipient_goes_back_to_the_sender_with_the_next_hops_reply(
    tmp_path: pathlib.Path, hop: postfix_hop.PostfixHop
) -> None:
    port, health = free_port(), free_port()
    proc = _receiver(tmp_path, hop, port, "--health-port", str(health))
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.example")
            assert "dsn" in client.esmtp_features
            assert client.mail(SENDER, ["RET=HDRS", "ENVID=env+2B1"])[0] == 250
            assert client.rcpt("user@contoso.com", ["NOTIFY=FAILURE"])[0] == 250
            orcpt = "ORCPT=rfc822;refused@contoso.com"
            assert client.rcpt(postfix_hop.REFUSED, ["NOTIFY=FAILURE", orcpt])[0] == 250
            assert client.data(_message("<refused@queue.test>"))[0] == 250
        _wait(lambda: _spool_empty(tmp_path / "spool") and len(hop.delivered()) >= 2, 30, "")
        metrics = _get(health, "/metrics")
        time.sleep(6)  # the next scan of the spool
        queue = json.loads(_get(health, "/queue"))
    finally:
        _stop(proc)
    # user@ and the notice to the sender were delivered; refused@ was returned
    assert "smtpgate_queue_delivered_total 2.0" in metrics
    assert 'smtpgate_queue_bounced_total{reason="refused"} 1.0' in metrics
    assert queue == {"messages": 0, "oldestSeconds": 0}
    by_recipient = {str(m["Delivered-To"]): m for m in hop.delivered()}
    assert set(by_recipient) == {"user@contoso.com", SENDER}
    notice = by_recipient[SENDER]
    assert notice["Return-Path"] == "<>"  # from the null sender
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    text, status, returned = notice.get_payload()
    report = status.as_string()
    assert postfix_hop.REFUSAL in text.get_payload(decode=True).decode()
    assert "Final-Recipient: rfc822; refused@contoso.com" in report
    assert "Original-Recipient: rfc822;refused@contoso.com" in report
    assert "Original-Envelope-Id: env+1" in report
    assert "Status: 5.1.1" in report
    assert f"Diagnostic-Code: smtp; {postfix_hop.REFUSAL}" in report
    assert "Action: failed" in report
    assert returned.get_content_type() == "text/rfc822-headers"  # RET=HDRS
    assert "Message-ID: <refused@queue.test>" in returned.get_payload()
    assert "x" * 300 not in returned.get_payload()


def test_a_refused_message_from_the_null_sender_is_not_returned(
    tmp_path: pathlib.Path, hop: postfix_hop.PostfixHop
) -> None:
    port = free_port()
    proc = _receiver(tmp_path, hop, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("", [postfix_hop.REFUSED], _message("<null@queue.test>"))
        _wait(lambda: _spool_empty(tmp_path / "spool"), 30, "the spool did not drain")
        time.sleep(2)
    finally:
        _stop(proc)
    assert hop.delivered() == []
    assert "no notice sent" in (tmp_path / "receiver.log").read_text()


def test_a_deferred_recipient_is_retried_without_sending_the_others_again(
    tmp_path: pathlib.Path, hop: postfix_hop.PostfixHop
) -> None:
    later = "later@contoso.com"
    hop.access(deferred=(later,))
    hop.postfix("reload")
    port = free_port()
    proc = _receiver(tmp_path, hop, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail(SENDER, ["user@contoso.com", later], _message("<partial@queue.test>"))
        assert len(hop.wait_delivered(1, 30)) == 1
        _wait(
            lambda: (
                (tmp_path / "spool" / "state").exists()
                and any((tmp_path / "spool" / "state").iterdir())
            ),
            10,
            "no delivery record",
        )
        time.sleep(3)  # some retries, each deferred again for later@
        proc.send_signal(signal.SIGKILL)  # the record must outlive the process
        _stop(proc)
        hop.access()
        hop.postfix("reload")
        proc = _receiver(tmp_path, hop, port)
        _wait(lambda: _spool_empty(tmp_path / "spool"), 30, "the spool did not drain")
        delivered = hop.wait_delivered(2, 30)
        time.sleep(2)
        delivered = hop.delivered()
    finally:
        _stop(proc)
    assert sorted(str(m["Delivered-To"]) for m in delivered) == [later, "user@contoso.com"]


def test_an_expired_message_goes_back_to_its_sender(
    tmp_path: pathlib.Path, hop: postfix_hop.PostfixHop
) -> None:
    hop.stop()
    port = free_port()
    proc = _receiver(tmp_path, hop, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail(SENDER, ["user@contoso.com"], _message("<old@queue.test>"))
        (queued,) = (tmp_path / "spool" / "new").iterdir()
        time.sleep(2)  # a try or two, refused connections
        two_days_ago = time.time() - 2 * 86400 - 60
        os.utime(queued, (two_days_ago, two_days_ago))
        hop.start()
        (notice,) = hop.wait_delivered(1, 30)
        _wait(lambda: _spool_empty(tmp_path / "spool"), 30, "the spool did not drain")
    finally:
        _stop(proc)
    assert notice["Delivered-To"] == SENDER
    report = notice.get_payload()[1].as_string()
    assert "Status: 4.4.7" in report
    assert "Message expired" in notice.get_payload()[0].get_payload(decode=True).decode()
    returned = notice.get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    assert "x" * 300 in returned.as_string()


def test_the_spool_of_a_receiver_gone_for_good_drains_with_the_drain_command(
    tmp_path: pathlib.Path, hop: postfix_hop.PostfixHop
) -> None:
    hop.stop()
    port = free_port()
    proc = _receiver(tmp_path, hop, port)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        for n in range(20):
            client.sendmail(SENDER, ["user@contoso.com"], _message(f"<{n}@gone.test>"))
    proc.send_signal(signal.SIGKILL)  # the pod is gone; its claim stays
    _stop(proc)
    hop.start()
    drained = _drain(tmp_path / "spool", hop, "--wait", "60")
    assert drained.returncode == 0, drained.stderr
    assert "drained 20 messages" in drained.stderr or "draining 20 messages" in drained.stderr
    delivered = _ids(hop.wait_delivered(20, 30))
    assert delivered == Counter({f"<{n}@gone.test>": 1 for n in range(20)})


def test_the_drain_command_says_when_messages_are_left(
    tmp_path: pathlib.Path, hop: postfix_hop.PostfixHop
) -> None:
    hop.stop()
    port = free_port()
    proc = _receiver(tmp_path, hop, port)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(SENDER, ["user@contoso.com"], _message("<left@gone.test>"))
    _stop(proc)
    drained = _drain(tmp_path / "spool", hop, "--wait", "3")
    assert drained.returncode == 1
    assert "still holds 1 message(s)" in drained.stderr
    hop.start()  # for the fixture's stop


def test_the_drain_command_with_tls_required_sends_nothing_to_a_next_hop_without_starttls(
    tmp_path: pathlib.Path, hop: postfix_hop.PostfixHop
) -> None:
    hop.stop()  # the receiver's own queue must not deliver it first
    port = free_port()
    proc = _receiver(tmp_path, hop, port)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(SENDER, ["user@contoso.com"], _message("<clear@gone.test>"))
    proc.send_signal(signal.SIGKILL)
    _stop(proc)
    hop.start()
    drained = _drain(tmp_path / "spool", hop, "--tls", "Required", "--wait", "3")
    assert drained.returncode == 1, drained.stderr
    assert "offers no STARTTLS, and nextHop.tls is Required" in drained.stderr
    assert hop.wait_delivered(1, 2) == []


def _drain(spool: pathlib.Path, hop: postfix_hop.PostfixHop, *extra: str) -> Any:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "smtpgate.receiver.drain",
            "--spool",
            str(spool),
            "--next-hop",
            f"smtp://127.0.0.1:{hop.port}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
