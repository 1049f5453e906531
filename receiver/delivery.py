"""Where accepted messages go. ``Delivery.deliver`` returns only once the message is
durable; the client hears 250 only after that."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Message:
    """An accepted message: envelope and the bytes to hand on (trace headers included)."""

    queue_id: str
    connector: str
    mail_from: str
    recipients: tuple[str, ...]
    content: bytes


class DeliveryError(Exception):
    """The message could not be made durable; ``permanent`` tells 5xx from 4xx."""

    def __init__(self, text: str, permanent: bool = False, code: int | None = None) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.code = code


class Delivery(Protocol):
    async def deliver(self, message: Message) -> None: ...


def new_queue_id() -> str:
    return uuid.uuid4().hex[:16].upper()


class MaildirDelivery:
    """A maildir spool: each message is written to tmp/, fsynced, renamed into new/, and the
    directory fsynced, before ``deliver`` returns. The envelope rides in a header line
    ``X-Smtpgate-Envelope`` at the top of the file."""

    def __init__(self, root: str | pathlib.Path) -> None:
        self.root = pathlib.Path(root)
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
            await asyncio.to_thread(self._write, message)
        except OSError as err:
            raise DeliveryError(f"spool write failed: {err.strerror}") from err
