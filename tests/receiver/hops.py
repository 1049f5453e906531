"""A next hop for the queue's tests: aiosmtpd's SMTP or LMTP on loopback, on an event loop
of its own thread, around a handler that decides each answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP
from smtpgate.receiver import delivery, relay


@contextlib.contextmanager
def serving(handler: Any, lmtp: bool = False, **engine: Any) -> Iterator[int]:
    """Serve ``handler`` on a free loopback port, yielded; closed on exit. ``engine``:
    aiosmtpd's SMTP settings (e.g. ``tls_context``, ``require_starttls``)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    protocol = LMTP if lmtp else SMTP
    server = asyncio.run_coroutine_threadsafe(
        loop.create_server(lambda: protocol(handler, **engine), sock=sock), loop
    ).result()
    try:
        yield sock.getsockname()[1]
    finally:

        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def attempt(handler: Any, recipients: tuple[str, ...], lmtp: bool = False) -> list[Any]:
    """One try of a small message to ``recipients`` through ``handler``, as the queue's
    threads make it (blocking): each recipient's answer."""
    message = delivery.Message(
        queue_id="Q",
        connector="",
        mail_from="s@example.org",
        recipients=recipients,
        content=b"Subject: q\r\n\r\nbody\r\n",
    )
    with serving(handler, lmtp) as port:
        client = relay.RelayDelivery("127.0.0.1", port, lmtp=lmtp, helo="mail.contoso.com")
        try:
            return list(client.attempt(message))
        finally:
            client.close()
