"""The receive protocol log and the metrics a session leaves behind."""

from __future__ import annotations

import base64
import contextlib
import csv
import os
import pathlib
import smtplib
import time
from typing import Any

from prometheus_client import REGISTRY
from smtpgate.receiver.protocol_log import FIELDS, ProtocolLog

from .conftest import PASSWORDS
from .helpers import Raw, plain


def _connector(**extra: Any) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "Logged",
            {
                "usage": "Custom",
                "bindings": ["0.0.0.0:25"],
                "remoteIPRanges": ["127.0.0.0/8"],
                "authMechanisms": ["TLS", "BasicAuth"],
                "permissionGroups": ["AnonymousUsers", "ExchangeUsers"],
                "protocolLoggingLevel": "Verbose",
                "tarpitIntervalSeconds": 0,
                **extra,
            },
        )
    ]


def test_verbose_protocol_log_has_exchange_fields_and_no_secrets(
    start: Any, tmp_path: pathlib.Path
) -> None:
    log_file = tmp_path / "RECV.LOG"
    plog = ProtocolLog(str(log_file))
    running = start(_connector(), protocol_log=plog)
    raw = Raw(running.port(25), source="127.0.0.9")
    raw.reply()
    raw.command("EHLO client.example")
    assert raw.command(f"AUTH PLAIN {plain('alice', PASSWORDS['alice'])}")[0] == 235
    raw.command("MAIL FROM:<alice@contoso.com>")
    raw.command("RCPT TO:<x@foreign.example>")
    raw.command("DATA")
    raw.send(b"Subject: logged\r\n\r\nbody\r\n.\r\n")
    assert raw.reply()[0] == 250
    raw.command("QUIT")
    second = Raw(running.port(25), source="127.0.0.9")
    second.reply()
    second.command("EHLO client.example")
    assert second.command("AUTH LOGIN")[0] == 334
    assert second.command(base64.b64encode(b"bob").decode())[0] == 334
    assert second.command(base64.b64encode(PASSWORDS["bob"].encode()).decode())[0] == 235
    second.command("QUIT")
    running.stop()
    plog.close()
    text = log_file.read_text()
    lines = text.splitlines()
    assert lines[0] == "#Software: smtpgate"
    assert f"#Fields: {FIELDS}" in lines
    rows = list(csv.reader(line for line in lines if not line.startswith("#")))
    assert all(len(row) == 9 for row in rows)
    events = [row[6] for row in rows]
    assert events[0] == "+" and "-" in events and {"<", ">", "*"} <= set(events)
    assert {row[1] for row in rows} == {"Logged"}
    first_session = [row for row in rows if row[2] == rows[0][2]]
    assert [int(row[3]) for row in first_session] == list(range(len(first_session)))
    assert first_session[0][5].startswith("127.0.0.9:")
    assert any(row[6] == "<" and row[7] == "AUTH PLAIN ****" for row in rows)
    assert any(row[6] == "<" and row[7] == "MAIL FROM:<alice@contoso.com>" for row in rows)
    for secret in (
        *PASSWORDS.values(),
        plain("alice", PASSWORDS["alice"]),
        base64.b64encode(PASSWORDS["bob"].encode()).decode(),
    ):
        assert secret not in text
    assert "body" not in text  # message content is not logged


def _dropped() -> float:
    return REGISTRY.get_sample_value("smtpgate_protocol_log_dropped_total") or 0.0


def test_a_protocol_log_nobody_reads_stalls_no_session_and_counts_its_drops(
    start: Any,
) -> None:
    read_end, write_end = os.pipe()  # a stdout whose reader has stopped reading
    stream = open(write_end, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    plog = ProtocolLog(stream=stream, queue_size=100)
    try:
        running = start(_connector(), protocol_log=plog)
        before = _dropped()
        began = time.monotonic()
        for n in range(100):  # some 180 KB of log: the pipe holds 64 KB
            with smtplib.SMTP("127.0.0.1", running.port(25), timeout=5) as smtp:
                smtp.sendmail("s@example.org", ["u@contoso.com"], f"Subject: {n}\r\n\r\nb\r\n")
        assert time.monotonic() - began < 30
        assert _dropped() > before
        assert len(running.messages()) == 100
    finally:
        os.close(read_end)  # the writer thread's stuck write fails: it ends
        plog.close(timeout=5)
        with contextlib.suppress(OSError):
            stream.close()


def test_connectors_without_verbose_logging_write_nothing(
    start: Any, tmp_path: pathlib.Path
) -> None:
    log_file = tmp_path / "RECV.LOG"
    plog = ProtocolLog(str(log_file))
    running = start(_connector(protocolLoggingLevel="None"), protocol_log=plog)
    raw = Raw(running.port(25))
    raw.reply()
    raw.command("QUIT")
    running.stop()
    plog.close()
    assert [line for line in log_file.read_text().splitlines() if not line.startswith("#")] == []


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_what_the_session_did(start: Any) -> None:
    labels = {"connector": "Logged"}
    before = {
        "sessions": _metric("smtpgate_sessions_total", **labels),
        "accepted": _metric("smtpgate_messages_accepted_total", **labels),
        "bytes": _metric("smtpgate_bytes_accepted_total", **labels),
        "relay": _metric("smtpgate_messages_refused_total", connector="Logged", reason="550"),
        "commits": _metric("smtpgate_spool_commit_messages_count"),
        "committed": _metric("smtpgate_spool_commit_messages_sum"),
    }
    running = start(_connector(protocolLoggingLevel="None"))
    raw = Raw(running.port(25))
    raw.reply()
    raw.command("EHLO client.example")
    raw.command("MAIL FROM:<s@example.org>")
    assert raw.command("RCPT TO:<x@foreign.example>")[0] == 550
    raw.command("RCPT TO:<x@contoso.com>")
    raw.command("DATA")
    raw.send(b"Subject: m\r\n\r\nbody\r\n.\r\n")
    assert raw.reply()[0] == 250
    raw.command("QUIT")
    assert _metric("smtpgate_sessions_total", **labels) == before["sessions"] + 1
    assert _metric("smtpgate_messages_accepted_total", **labels) == before["accepted"] + 1
    assert _metric("smtpgate_bytes_accepted_total", **labels) > before["bytes"] + 20
    assert (
        _metric("smtpgate_messages_refused_total", connector="Logged", reason="550")
        == before["relay"] + 1
    )
    assert _metric("smtpgate_spool_commit_messages_count") == before["commits"] + 1
    assert _metric("smtpgate_spool_commit_messages_sum") == before["committed"] + 1
