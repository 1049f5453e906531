"""Where accepted messages go. ``Delivery.deliver`` returns only once the message is
durable; the client hears 250 only after that."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import pathlib
import random
import smtplib
import socket
import time
from dataclasses import dataclass
from typing import Protocol

from smtpgate.connectors.specs import NextHop


@dataclass(frozen=True)
class Message:
    """An accepted message: envelope and the bytes to hand on (trace headers included)."""

    queue_id: str
    connector: str
    mail_from: str
    recipients: tuple[str, ...]
    content: bytes


class DeliveryError(Exception):
    """The message could not be made durable. ``code`` and ``text`` are the next hop's own
    refusal where it gave one (passed back to the client); otherwise the failure is
    temporary and the client hears 451."""

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class Delivery(Protocol):
    async def deliver(self, message: Message) -> None: ...


def new_queue_id() -> str:
    """16 hex digits. Unique, not secret: the random module (reseeded in every forked
    worker) costs a fraction of a system call for entropy on every message."""
    return f"{random.getrandbits(64):016X}"


class MaildirDelivery:
    """A maildir spool: each message is written to tmp/, fsynced, renamed into new/, and the
    directory fsynced, before ``deliver`` returns. The envelope rides in a header line
    ``X-Smtpgate-Envelope`` at the top of the file."""

    def __init__(self, root: str | pathlib.Path, writers: int = 64) -> None:
        self.root = pathlib.Path(root)
        # Many sessions fsync at once: the filesystem journal commits them together.
        self._writers = concurrent.futures.ThreadPoolExecutor(writers, thread_name_prefix="spool")
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")

    def _write(self, message: Message) -> pathlib.Path:
        name = f"{time.time_ns()}.{message.queue_id}.{self._host}"
        tmp = self.root / "tmp" / name
        envelope = (
            f"X-Smtpgate-Envelope: from=<{message.mail_from}>; "
            f"to={','.join(f'<{r}>' for r in message.recipients)}\r\n"
        ).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, envelope + message.content)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.root / "new" / name
        os.rename(tmp, final)
        directory = os.open(self.root / "new", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return final

    async def deliver(self, message: Message) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._writers, self._write, message)
        except OSError as err:
            raise DeliveryError(f"spool write failed: {err.strerror}") from err


class RelayDelivery:
    """Relay over SMTP or LMTP to the next hop, synchronously: ``deliver`` returns only when
    the next hop accepted the message for every recipient. A recipient the next hop refuses
    aborts the transaction (RSET) before DATA, so nothing is delivered twice on retry."""

    def __init__(
        self,
        host: str,
        port: int,
        lmtp: bool = False,
        helo: str | None = None,
        timeout: float = 120,
    ) -> None:
        self.host, self.port, self.lmtp = host, port, lmtp
        self.helo, self.timeout = helo, timeout

    def _refusal(self, client: smtplib.SMTP, code: int, text: bytes, stage: str) -> DeliveryError:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.rset()
        reply = text.decode("utf-8", "replace").replace("\n", " ")
        if code < 400:
            return DeliveryError(f"next hop answered {code} at {stage}: {reply}")
        return DeliveryError(reply, code)

    def _send(self, message: Message) -> None:
        factory = smtplib.LMTP if self.lmtp else smtplib.SMTP
        with factory(
            self.host, self.port, local_hostname=self.helo, timeout=self.timeout
        ) as client:
            client.ehlo_or_helo_if_needed()
            code, text = client.mail(message.mail_from)
            if code != 250:
                raise self._refusal(client, code, text, "MAIL")
            for recipient in message.recipients:
                code, text = client.rcpt(recipient)
                if code not in (250, 251):
                    raise self._refusal(client, code, text, "RCPT")
            try:
                code, text = client.data(message.content)
            except smtplib.SMTPDataError as err:
                raise DeliveryError(
                    err.smtp_error.decode("utf-8", "replace"), err.smtp_code
                ) from err
            if self.lmtp:
                # LMTP answers once per recipient after DATA.
                for _ in message.recipients[1:]:
                    more_code, more_text = client.getreply()
                    if more_code != 250:
                        code, text = more_code, more_text
            if code != 250:
                raise DeliveryError(text.decode("utf-8", "replace"), code)

    async def deliver(self, message: Message) -> None:
        try:
            await asyncio.to_thread(self._send, message)
        except DeliveryError:
            raise
        except smtplib.SMTPResponseException as err:
            raise DeliveryError(err.smtp_error.decode("utf-8", "replace"), err.smtp_code) from err
        except (smtplib.SMTPException, OSError) as err:
            raise DeliveryError(f"next hop {self.host}:{self.port} unavailable: {err}") from err


def from_next_hop(next_hop: NextHop, spool: str | None = None, helo: str | None = None) -> Delivery:
    """The delivery a server's next hop asks for (``spool`` overrides a Maildir path)."""
    if next_hop.type == "Maildir" or spool:
        return MaildirDelivery(spool or next_hop.path)
    if not next_hop.host or not next_hop.port:
        raise ValueError(f"a {next_hop.type} next hop needs host and port")
    return RelayDelivery(next_hop.host, next_hop.port, lmtp=next_hop.type == "Lmtp", helo=helo)
