"""Delivery status notifications (RFC 3464): the ``multipart/report`` the queue sends
back to a message's envelope sender, from the null sender, for the recipients the next
hop refused or that expired. Written as a stream of parts, so a notice that returns a big
message is never held in memory whole.

What goes back follows RFC 3461's RET and Postfix's ``bounce_size_limit``: RET=HDRS
returns the header section (``text/rfc822-headers``); otherwise the whole message
(``message/rfc822``) up to ``RETURN_LIMIT`` octets, and the header section past that."""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

RETURN_LIMIT = 50_000
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Failure:
    """One recipient the message could not reach."""

    recipient: str
    code: int  # the next hop's reply code, or 0 when it never answered (expiry)
    text: str  # its reply text, one line; or why the message expired
    original: str | None = None  # ORCPT, as "rfc822;user@example"

    @property
    def status(self) -> str:
        """The enhanced status code: the next hop's own, else one from its reply code."""
        match = _STATUS.match(self.text)
        if match is not None:
            return ".".join(match.groups())
        if 500 <= self.code < 600:
            return "5.0.0"
        return "4.4.7"  # delivery time expired

    @property
    def diagnostic(self) -> str | None:
        if not self.code:
            return None
        return _clean(f"smtp; {self.code} {self.text}")[:900]


def status_of(code: int, text: str) -> str:
    return Failure("", code, text).status


def _clean(text: str) -> str:
    return _UNSAFE.sub(" ", text)


def notice(
    *,
    reporting_mta: str,
    remote_mta: str,
    sender: str,
    queue_id: str,
    arrived: float,
    envid: str | None,
    failures: list[Failure],
    headers_only: bool,
    size: int,
    original: Iterable[bytes],
) -> Iterator[bytes]:
    """The notice, as the bytes of a message (CRLF lines), ending with CRLF."""
    boundary = f"{queue_id}.{secrets.token_hex(12)}/{reporting_mta}"
    now = email.utils.formatdate(localtime=False)
    expired = all(not f.code for f in failures)
    subject = "Undelivered Mail Returned to Sender"
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{_clean(sender)}>",
        f"Subject: {subject}",
        f"Date: {now}",
        f"Message-ID: <{queue_id}.{secrets.token_hex(6)}.dsn@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to the recipients below"
        + (
            " before it expired."
            if expired
            else f". The next hop, {remote_mta}, refused it with the reply shown."
        ),
        "",
    ]
    for failure in failures:
        reply = f"{failure.code} {failure.text}" if failure.code else failure.text
        head.append(f"<{_clean(failure.recipient)}>: {_clean(reply)[:900]}")
    head += [
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Smtpgate-Queue-ID: {queue_id}",
    ]
    if envid:
        head.append(f"Original-Envelope-Id: {_clean(envid)}")
    head.append(f"Arrival-Date: {email.utils.formatdate(arrived, localtime=False)}")
    for failure in failures:
        head.append("")
        if failure.original:
            head.append(f"Original-Recipient: {_clean(failure.original)}")
        head += [
            f"Final-Recipient: rfc822; {_clean(failure.recipient)}",
            "Action: failed",
            f"Status: {failure.status}",
        ]
        if failure.diagnostic:
            head += [f"Remote-MTA: dns; {remote_mta}", f"Diagnostic-Code: {failure.diagnostic}"]
        head.append(f"Last-Attempt-Date: {now}")
    whole = not headers_only and size <= RETURN_LIMIT
    head += [
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message" + ("" if whole else " Headers"),
        "Content-Type: " + ("message/rfc822" if whole else "text/rfc822-headers"),
        "",
        "",
    ]
    yield "\r\n".join(head).encode("utf-8", "surrogateescape")
    at_start = True
    for chunk in original if whole else header_section(original):
        if chunk:
            yield chunk
            at_start = chunk.endswith(b"\n")
    yield (b"" if at_start else b"\r\n") + f"\r\n--{boundary}--\r\n".encode()


def header_section(chunks: Iterable[bytes], limit: int = 1 << 20) -> Iterator[bytes]:
    """A message's header section (up to its empty line; at most ``limit`` octets)."""
    seen = b""
    for chunk in chunks:
        seen += chunk
        end = seen.find(b"\r\n\r\n")
        if end >= 0:
            yield seen[: end + 2]
            return
        if len(seen) >= limit:
            break
    yield seen[:limit]
