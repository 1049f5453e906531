"""The queue's parts without a network: the envelope line read back as written, the
retry decisions, and the notice's shape."""

from __future__ import annotations

import email
import email.policy
import os
import pathlib

import pytest
from smtpgate.receiver import delivery, dsn, retries, spoolfile


@pytest.mark.parametrize(
    ("sender", "recipients", "mail", "rcpt"),
    [
        ("s@example.org", ("u@contoso.com",), (), ()),
        ("", ("a@contoso.com", "b@contoso.com"), ("BODY=8BITMIME",), ()),
        (
            '"x>; to=<evil@victim.example>; y"@example.org',
            ("a@contoso.com", "b@contoso.com"),
            ("RET=HDRS", "ENVID=a+2Bb;c<d>"),
            (("NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;a@contoso.com"), ()),
        ),
        ("s@example.org", ("ü@contoso.com",), ("SMTPUTF8",), (("NOTIFY=NEVER",),)),
    ],
)
def test_the_envelope_line_reads_back_as_written(
    sender: str,
    recipients: tuple[str, ...],
    mail: tuple[str, ...],
    rcpt: tuple[tuple[str, ...], ...],
) -> None:
    line = delivery._envelope(sender, recipients, mail, rcpt)
    assert line.endswith(b"\r\n") and line.count(b"\r\n") == 1
    envelope = spoolfile.parse(line)
    assert envelope == spoolfile.Envelope(sender, recipients, mail, rcpt)


@pytest.mark.parametrize(
    "line",
    [
        b"Subject: hi",
        b"X-Smtpgate-Envelope: to=<a@b>",
        b"X-Smtpgate-Envelope: from=<a>; to=<b>; rcpt=<>,<>",
    ],
)
def test_an_unreadable_envelope_is_refused(line: bytes) -> None:
    with pytest.raises(spoolfile.Unreadable):
        spoolfile.parse(line)


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (250, retries.Outcome.DELIVERED),
        (251, retries.Outcome.DELIVERED),
        (450, retries.Outcome.DEFERRED),
        (421, retries.Outcome.DEFERRED),
        (550, retries.Outcome.REFUSED),
        (554, retries.Outcome.REFUSED),
        (354, retries.Outcome.DEFERRED),
    ],
)
def test_a_reply_code_settles_a_recipient_or_not(code: int, outcome: retries.Outcome) -> None:
    assert retries.outcome(code) is outcome


@pytest.mark.parametrize(
    ("age", "wait"), [(0, 60), (30, 60), (300, 300), (1000, 1000), (5000, 1800), (10**6, 1800)]
)
def test_each_wait_is_as_long_as_the_message_has_waited_within_bounds(age: int, wait: int) -> None:
    assert retries.backoff(age, 60, 1800) == wait


@pytest.mark.parametrize(
    ("sender", "notify", "told"),
    [
        ("s@example.org", None, True),
        ("s@example.org", "FAILURE", True),
        ("s@example.org", "SUCCESS,FAILURE", True),
        ("s@example.org", "NEVER", False),
        ("s@example.org", "DELAY", False),
        ("", None, False),
        ("<>", "FAILURE", False),
    ],
)
def test_who_hears_of_a_failure(sender: str, notify: str | None, told: bool) -> None:
    assert retries.notify_failure(sender, notify) is told


def _notice(size: int, headers_only: bool) -> email.message.Message:
    original = b"Subject: big\r\nMessage-ID: <m@x>\r\n\r\n" + b"y" * size + b"\r\n"
    parts = dsn.notice(
        reporting_mta="mail.contoso.com",
        remote_mta="127.0.0.1:25",
        sender="s@example.org",
        queue_id="Q1",
        arrived=0,
        envid=None,
        failures=[dsn.Failure("u@contoso.com", 552, "5.3.4 Message too big")],
        headers_only=headers_only,
        size=len(original),
        original=[original[:10], original[10:]],
    )
    return email.message_from_bytes(b"".join(parts))


@pytest.mark.parametrize(
    ("size", "headers_only", "kind"),
    [
        (100, False, "message/rfc822"),
        (100, True, "text/rfc822-headers"),
        (dsn.RETURN_LIMIT, False, "text/rfc822-headers"),  # too big to return whole
    ],
)
def test_a_notice_returns_the_message_or_its_header(
    size: int, headers_only: bool, kind: str
) -> None:
    notice = _notice(size, headers_only)
    assert notice.get_content_type() == "multipart/report"
    text, status, returned = notice.get_payload()
    assert returned.get_content_type() == kind
    fields = status.get_payload()
    assert "Status: 5.3.4" in status.as_string()
    assert "Diagnostic-Code: smtp; 552 5.3.4 Message too big" in status.as_string()
    assert fields  # a per-message and a per-recipient group
    assert "Message-ID: <m@x>" in returned.as_string()


@pytest.mark.parametrize(
    ("code", "text", "status"),
    [(550, "5.1.1 no such user", "5.1.1"), (550, "no such user", "5.0.0"), (0, "expired", "4.4.7")],
)
def test_the_status_is_the_next_hops_own_where_it_gave_one(
    code: int, text: str, status: str
) -> None:
    assert dsn.status_of(code, text) == status


def test_a_record_line_cut_short_by_a_crash_settles_nobody(tmp_path: pathlib.Path) -> None:
    # "delivered 12\n" torn after its "1": recipient 1 has not had the message.
    for sub in ("tmp", "new", "cur", "state"):
        (tmp_path / sub).mkdir()
    to = ",".join(f"<u{n}@contoso.com>" for n in range(13))
    envelope = f"X-Smtpgate-Envelope: from=<s@example.org>; to={to}\r\n".encode()
    spoolfile.write_message(tmp_path, "1.Q.h", [envelope, b"Subject: q\r\n\r\nbody\r\n"])
    (tmp_path / "state" / "1.Q.h").write_text("delivered 3\ndelivered 1")
    queued = spoolfile.Queued(tmp_path, "new", "1.Q.h")
    try:
        assert queued.open()
        assert queued.record.delivered == {3}
    finally:
        queued.close()


def test_opening_a_big_queued_message_reads_its_envelope_line_not_the_message(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every try opens the message; with the next hop away, a spool of big messages was
    # read whole (up to 4 MiB each) at every try only to find the envelope line.
    for sub in ("tmp", "new", "cur", "state"):
        (tmp_path / sub).mkdir()
    envelope = b"X-Smtpgate-Envelope: from=<s@example.org>; to=<u@contoso.com>\r\n"
    spoolfile.write_message(tmp_path, "1.Q.h", [envelope, b"Subject: q\r\n\r\n", b"x" * (3 << 20)])
    read = []
    pread = os.pread

    def counted(fd: int, size: int, offset: int) -> bytes:
        data = pread(fd, size, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counted)
    queued = spoolfile.Queued(tmp_path, "new", "1.Q.h")
    try:
        assert queued.open()
    finally:
        queued.close()
    assert queued.envelope.recipients == ("u@contoso.com",)
    assert sum(read) <= 64 << 10


def test_an_envelope_line_longer_than_the_first_read_still_reads_back(
    tmp_path: pathlib.Path,
) -> None:
    for sub in ("tmp", "new", "cur", "state"):
        (tmp_path / sub).mkdir()
    recipients = tuple(f"recipient-{n:05d}@contoso.com" for n in range(4000))  # ~130 KB
    line = delivery._envelope("s@example.org", recipients)
    assert len(line) > spoolfile.ENVELOPE_READ
    spoolfile.write_message(tmp_path, "1.Q.h", [line, b"Subject: q\r\n\r\nbody\r\n"])
    queued = spoolfile.Queued(tmp_path, "new", "1.Q.h")
    try:
        assert queued.open()
    finally:
        queued.close()
    assert queued.envelope.recipients == recipients
    assert queued.size == len(b"Subject: q\r\n\r\nbody\r\n")
