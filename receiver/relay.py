"""Relay to the next hop over SMTP or LMTP: ``deliver`` returns only once the next hop
has taken the message; its refusals are passed back, one line, without its line breaks.

MAIL and RCPT parameters go on where the next hop offers their extension (SIZE,
BODY=8BITMIME, DSN's RET, ENVID, NOTIFY and ORCPT); what it does not offer is withheld from
this server's own EHLO from the first connection on (``withheld``), and an 8-bit message
declared BODY=8BITMIME that it could not take is refused (554 5.6.3) rather than mangled.

LMTP answers DATA once per recipient. When some recipients took the message and others
did not, the client (which hears one reply for all) is told to try again later (451) and
the recipients that have the message are remembered by the message's fingerprint, so the
retry goes to the others only: every recipient gets it once, none is lost. A retry in
which nobody else can take it any more gets the refusal, naming who has it already."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import smtplib
import ssl
import threading
import time

from smtpgate.connectors.enums import NextHopTls

from . import spill, workers
from .delivery import DeliveryError, Message
from .replies import Reply, one_line


class RelayDelivery:
    """Relay over SMTP or LMTP to the next hop, synchronously: ``deliver`` returns only when
    the next hop accepted the message for every recipient. A recipient the next hop refuses
    aborts the transaction (RSET) before DATA, so nothing is delivered twice on retry.

    Connections are kept for the next message (up to ``idle_seconds`` unused). A kept
    connection the next hop has closed in the meantime is noticed at MAIL, before anything
    of the message was sent, and the message goes on a new connection instead.

    Relaying runs on threads of its own, at most ``concurrency`` messages at once (more
    wait their turn): a next hop that hangs holds those threads and nothing else, not the
    threads that check passwords (``users``) or the event loop's default pool."""

    def __init__(
        self,
        host: str,
        port: int,
        lmtp: bool = False,
        helo: str | None = None,
        timeout: float = 120,
        idle_seconds: float = 20,
        concurrency: int = 32,
        spill_dir: str | None = None,
        tls: NextHopTls = NextHopTls.Opportunistic,
    ) -> None:
        self.host, self.port, self.lmtp, self.tls = host, port, lmtp, NextHopTls(tls)
        self.spill_dir = spill_dir
        self.helo, self.timeout, self.idle_seconds = helo, timeout, idle_seconds
        self._threads = concurrent.futures.ThreadPoolExecutor(
            concurrency, "relay", initializer=workers.free_thread
        )
        self._idle: list[tuple[smtplib.SMTP, float]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._features: frozenset[str] | None = None  # the next hop's, at its last EHLO
        self._delivered = Delivered()

    def spill(self, queue_id: str, mail_from: str, *_envelope: object) -> spill.Spill:
        return spill.anonymous(self.spill_dir)

    def admit(self) -> Reply | None:
        return None  # nothing is kept here: the next hop's own answer is the client's

    def attempt(self, message: Message) -> list[tuple[int, str]]:
        """One try of ``message`` (blocking: for the queue's threads) for each of its
        recipients: each recipient's own answer, code and one line of text (250 when the
        next hop took it). Unlike ``deliver``, a refused recipient does not stop the others.
        Raises OSError or SMTPException when the next hop could not be asked at all, or
        went away before it answered for every recipient."""
        client = self._kept()
        if client is not None:
            try:
                return self._attempt_each(client, message, kept=True)
            except _Gone:
                self._drop_kept()
        return self._attempt_each(self._connect(), message, kept=False)

    def _attempt_each(
        self, client: smtplib.SMTP, message: Message, kept: bool
    ) -> list[tuple[int, str]]:
        try:
            answers, clean = self._each(client, message, kept)
        except BaseException:
            client.close()
            raise
        if clean and client.sock is not None:
            self._keep(client)
        else:
            client.close()
        return [(code, one_line(text)) for code, text in answers]

    def _each(
        self, client: smtplib.SMTP, message: Message, kept: bool
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """The transaction of ``attempt``: every recipient's answer, and whether the
        connection is in a clean state for the next message."""
        self._features = frozenset(client.esmtp_features)
        count = len(message.recipients)
        try:
            options = self._mail_options(client, message)
        except _Clean as err:  # nothing sent: the message cannot go to this next hop
            return [(err.code or 554, err.text.encode())] * count, True
        try:
            code, text = client.mail(message.mail_from, options)
        except (smtplib.SMTPServerDisconnected, OSError):
            if kept:
                raise _Gone() from None
            raise
        if kept and code == 421:
            raise _Gone()
        if code != 250:
            return [_before_data(code, text, "MAIL")] * count, _rset(client)
        dsn = client.has_extn("dsn")
        answers: list[tuple[int, bytes] | None] = [None] * count
        taken = []
        for index, (recipient, rcpt) in enumerate(
            zip(message.recipients, _rcpt_options(message), strict=True)
        ):
            code, text = client.rcpt(recipient, rcpt if dsn else ())
            if code in (250, 251):
                taken.append(index)
            else:
                answers[index] = _before_data(code, text, "RCPT")
        if not taken:
            return [a for a in answers if a is not None], _rset(client)
        try:
            code, text = _data(client, message)
        except smtplib.SMTPDataError as err:
            for index in taken:
                answers[index] = (err.smtp_code, err.smtp_error)
            return [a for a in answers if a is not None], _rset(client)
        replies = [(code, text)]
        clean = True
        if self.lmtp:  # LMTP answers once per recipient after DATA
            for _ in taken[1:]:
                try:
                    replies.append(client.getreply())
                except (smtplib.SMTPServerDisconnected, OSError) as err:
                    # The answers heard so far stand (those recipients have it); the
                    # others are tried again.
                    lost = f"4.4.2 Connection lost before the next hop answered: {err}"
                    replies += [(451, lost.encode())] * (len(taken) - len(replies))
                    clean = False
                    break
        else:
            replies *= len(taken)
        for index, reply in zip(taken, replies, strict=True):
            answers[index] = reply
        return [a for a in answers if a is not None], clean

    async def deliver(self, message: Message) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._threads, self._send, message)
        except RuntimeError as err:  # closed: the message never reached a thread
            if message.spilled is not None:
                message.spilled.discard()
            raise DeliveryError(f"relay stopped: {err}") from err
        except DeliveryError:
            raise
        except smtplib.SMTPResponseException as err:
            raise DeliveryError(one_line(err.smtp_error), err.smtp_code) from err
        except (smtplib.SMTPException, OSError) as err:
            raise DeliveryError(f"next hop {self.host}:{self.port} unavailable: {err}") from err

    def close(self) -> None:
        """QUIT every kept connection; from now on none is kept."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for client, _ in idle:
            _quit(client)
        self._threads.shutdown(wait=False)

    def _send(self, message: Message) -> None:
        try:
            self._send_on_a_connection(message)
        finally:
            if message.spilled is not None:
                message.spilled.discard()

    def _send_on_a_connection(self, message: Message) -> None:
        client = self._kept()
        if client is not None:
            try:
                self._attempt(client, message, kept=True)
                return
            except _Gone:
                self._drop_kept()  # the next hop went away: the others are gone too
        self._attempt(self._connect(), message, kept=False)

    def _connect(self) -> smtplib.SMTP:
        """A new connection to the next hop, greeted (EHLO, or LHLO), and encrypted as
        ``tls`` says: with STARTTLS where the next hop offers it (Opportunistic, Required),
        greeted again after the handshake as RFC 3207 asks. When the handshake or that
        greeting fails, Opportunistic goes on in the clear on a new connection (which is
        not kept for later messages, so the next one tries TLS again) and Required raises
        ``TlsRefused`` (451) rather than send anything in the clear."""
        client = self._open()
        try:
            client.ehlo_or_helo_if_needed()
            if self.tls is NextHopTls.Off:
                return client
            if not client.has_extn("starttls"):
                if self.tls is NextHopTls.Required:
                    _quit(client)
                    raise TlsRefused(
                        f"4.7.4 next hop {self.host}:{self.port} offers no STARTTLS, "
                        "and nextHop.tls is Required"
                    )
                return client
            try:
                client.starttls(context=_tls_context())
                client.ehlo_or_helo_if_needed()  # raises unless the next hop greets back
            except (ssl.SSLError, smtplib.SMTPException, OSError) as err:
                if self.tls is NextHopTls.Required:
                    raise TlsRefused(
                        f"4.7.5 STARTTLS to next hop {self.host}:{self.port} failed: "
                        f"{_failure(err)}"
                    ) from err
                client.close()
                client = self._open()
                client.ehlo_or_helo_if_needed()
        except BaseException:
            client.close()
            raise
        return client

    def _open(self) -> smtplib.SMTP:
        factory = smtplib.LMTP if self.lmtp else smtplib.SMTP
        return factory(self.host, self.port, local_hostname=self.helo, timeout=self.timeout)

    def _attempt(self, client: smtplib.SMTP, message: Message, kept: bool) -> None:
        """One try on ``client``: kept for the next message when it ends in a clean state,
        closed otherwise (without QUIT, which could wait as long as the failure did)."""
        try:
            self._transaction(client, message, kept)
        except _Clean:
            self._keep(client)
            raise
        except BaseException:
            client.close()
            raise
        self._keep(client)

    def _transaction(self, client: smtplib.SMTP, message: Message, kept: bool) -> None:
        self._features = frozenset(client.esmtp_features)
        fingerprint = message.fingerprint() if self._delivered else None
        earlier = self._delivered.get(fingerprint, frozenset()) if fingerprint else frozenset()
        wanted = [
            (recipient, options)
            for recipient, options in zip(message.recipients, _rcpt_options(message), strict=True)
            if recipient not in earlier
        ]
        if not wanted:
            return  # every recipient took it on an earlier try
        try:
            code, text = client.mail(message.mail_from, self._mail_options(client, message))
        except (smtplib.SMTPServerDisconnected, OSError):
            if kept:
                raise _Gone() from None
            raise
        if kept and code == 421:
            raise _Gone()  # e.g. the next hop's idle timeout
        if code != 250:
            raise self._refusal(client, code, text, "MAIL")
        dsn = client.has_extn("dsn")
        for recipient, options in wanted:
            code, text = client.rcpt(recipient, options if dsn else ())
            if code not in (250, 251):
                raise self._refusal(client, code, text, "RCPT")
        try:
            code, text = _data(client, message)
        except smtplib.SMTPDataError as err:
            raise self._refusal(client, err.smtp_code, err.smtp_error, "DATA") from err
        if self.lmtp:  # LMTP answers once per recipient after DATA
            answers = [(code, text)] + [client.getreply() for _ in wanted[1:]]
        else:
            answers = [(code, text)] * len(wanted)
        self._outcome(message, fingerprint, earlier, [r for r, _ in wanted], answers)

    def _outcome(
        self,
        message: Message,
        fingerprint: str | None,
        earlier: frozenset[str],
        recipients: list[str],
        answers: list[tuple[int, bytes]],
    ) -> None:
        """Settle the DATA answers (one per recipient with LMTP): return when every
        recipient has the message, else raise what the client hears."""
        took = {r for r, (code, _) in zip(recipients, answers, strict=True) if code == 250}
        failed = [(code, text) for code, text in answers if code != 250]
        if not failed:
            if fingerprint:
                self._delivered.pop(fingerprint)
            return
        fingerprint = fingerprint or message.fingerprint()
        have = earlier | took
        if have:
            self._delivered.set(fingerprint, frozenset(have))
        temporary = [a for a in failed if 400 <= a[0] < 500]
        code, text = (temporary or failed)[0]
        reply = one_line(text)
        if took:  # some have it now: the others on a retry, never twice
            listed = ", ".join(sorted(took))
            raise _Clean(f"4.3.0 Delivered to {listed}; the others: {reply}", 451)
        if have and not temporary:
            listed = ", ".join(sorted(have))
            reply = f"{reply} (already delivered to {listed})"
        raise _Clean(reply, code if code >= 400 else None)

    def _mail_options(self, client: smtplib.SMTP, message: Message) -> list[str]:
        """The MAIL parameters the next hop takes: SIZE, BODY, and DSN's RET and ENVID."""
        options = [f"SIZE={message.size}"] if client.has_extn("size") else []
        if message.option("BODY") == "8BITMIME":
            if client.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            elif not all(chunk.isascii() for chunk in message.chunks()):
                raise _Clean("5.6.3 The next hop does not accept 8-bit messages (no 8BITMIME)", 554)
        if client.has_extn("dsn"):
            options += [o for o in message.mail_options if o.upper().startswith(_DSN_MAIL)]
        return options

    def withheld(self) -> frozenset[str]:
        """DSN and 8BITMIME when the next hop did not offer them at its last EHLO."""
        known = self._features
        if known is None:
            return frozenset()
        return frozenset(k for k in ("DSN", "8BITMIME") if k.lower() not in known)

    def _refusal(self, client: smtplib.SMTP, code: int, text: bytes, stage: str) -> DeliveryError:
        """The next hop's refusal, to pass back; the connection is kept when RSET shows it
        is still in a clean state."""
        try:
            clean = client.rset()[0] == 250
        except (smtplib.SMTPException, OSError):
            clean = False
        reply = one_line(text)
        if code < 400:
            reply, code = f"next hop answered {code} at {stage}: {reply}", 0
        if clean:
            return _Clean(reply, code or None)
        return DeliveryError(reply, code or None)

    def _kept(self) -> smtplib.SMTP | None:
        now, expired, found = time.monotonic(), [], None
        with self._lock:
            while self._idle:
                client, since = self._idle.pop()
                if now - since < self.idle_seconds:
                    found = client
                    break
                expired.append(client)
        for client in expired:
            _quit(client)
        return found

    def _keep(self, client: smtplib.SMTP) -> None:
        # A connection in the clear to a next hop that offers STARTTLS is one whose
        # handshake failed (Opportunistic): not kept, so the next message tries again.
        fell_back = (
            self.tls is not NextHopTls.Off
            and client.has_extn("starttls")
            and not isinstance(client.sock, ssl.SSLSocket)
        )
        with self._lock:
            if not fell_back and not self._closed and self.idle_seconds > 0:
                self._idle.append((client, time.monotonic()))
                return
        _quit(client)

    def _drop_kept(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for client, _ in idle:
            _quit(client)


class TlsRefused(smtplib.SMTPResponseException):
    """Nothing was sent: nextHop.tls is Required and the next hop cannot be reached
    encrypted (it offers no STARTTLS, or the handshake failed). Temporary (451)."""

    def __init__(self, text: str) -> None:
        super().__init__(451, text.encode())

    def __str__(self) -> str:  # the queue's record of the try: the reason, as it reads
        return str(self.smtp_error.decode())


def _failure(err: BaseException) -> str:
    if isinstance(err, smtplib.SMTPResponseException):
        return f"{err.smtp_code} {one_line(err.smtp_error)}"
    return one_line(str(err))


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The client side of STARTTLS to a next hop: TLS 1.2 or later, the next hop's
    certificate not checked (nextHop.tls encrypts; it does not authenticate the next hop)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _before_data(code: int, text: bytes, stage: str) -> tuple[int, bytes]:
    """A recipient's answer from a refusal at MAIL or RCPT. Only the answer to DATA says
    the next hop has the message: any other 2xx (a 252 at RCPT) becomes a deferral."""
    if 200 <= code < 300:
        return 451, f"4.5.0 Next hop answered {code} at {stage}: {one_line(text)}".encode()
    return code, text


def _rset(client: smtplib.SMTP) -> bool:
    """RSET after a refusal: whether the connection is clean again."""
    try:
        return client.rset()[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


def _data(client: smtplib.SMTP, message: Message) -> tuple[int, bytes]:
    """smtplib's ``data``, streaming a spilled message from its file."""
    if message.spilled is None:
        return client.data(message.content)
    code, text = client.docmd("data")
    if code != 354:
        raise smtplib.SMTPDataError(code, text)
    # The end marker goes with the last chunk: sent on its own, Nagle's algorithm would
    # hold it until the next hop's delayed ACK of that chunk (40 ms a message).
    last = b""
    for chunk in spill.stuffed(message.spilled.chunks()):
        if last:
            client.send(last)
        last = chunk
    client.send(last + b".\r\n")  # the content ends with CRLF: DATA's reader keeps it so
    return client.getreply()


class _Gone(Exception):
    """A kept connection the next hop closed before this message began."""


class _Clean(DeliveryError):
    """A refusal after which the connection is in a clean state and may be kept."""


def _quit(client: smtplib.SMTP) -> None:
    """Say goodbye on a connection in a known good state, waiting briefly for the answer."""
    if client.sock is not None:
        client.sock.settimeout(2)
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.quit()
    client.close()


_DSN_MAIL = ("RET=", "ENVID=")
_DSN_RCPT = ("NOTIFY=", "ORCPT=")


def _rcpt_options(message: Message) -> list[tuple[str, ...]]:
    """Each recipient's DSN parameters."""
    given = list(message.rcpt_options) or [()] * len(message.recipients)
    return [tuple(o for o in options if o.upper().startswith(_DSN_RCPT)) for options in given]


class Delivered:
    """Recipients that have a message which others of its recipients have not yet taken,
    by the message's fingerprint: at most ``size`` messages, each for ``seconds`` (a
    client's queue retries for some days)."""

    def __init__(self, size: int = 10000, seconds: float = 5 * 86400) -> None:
        self.size, self.seconds = size, seconds
        self._entries: collections.OrderedDict[str, tuple[float, frozenset[str]]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, fingerprint: str, default: frozenset[str]) -> frozenset[str]:
        with self._lock:
            entry = self._entries.get(fingerprint)
            if entry is None or entry[0] < time.monotonic() - self.seconds:
                return default
            return entry[1]

    def set(self, fingerprint: str, recipients: frozenset[str]) -> None:
        with self._lock:
            self._entries[fingerprint] = (time.monotonic(), recipients)
            self._entries.move_to_end(fingerprint)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def pop(self, fingerprint: str) -> None:
        with self._lock:
            self._entries.pop(fingerprint, None)
