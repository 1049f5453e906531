"""The queue's try of one message over LMTP settles each recipient by its own answer after
DATA (RFC 2033). No LMTP server from elsewhere is installed here (Postfix has only the
client), so aiosmtpd's LMTP stands for the next hop, as in test_delivery."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from aiosmtpd.lmtp import LMTP
from smtpgate.receiver import delivery, relay


class PerRecipient:
    """Refuses ``gone@`` at RCPT; after DATA takes the message for every recipient but
    ``full@``, whose mailbox is full."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str]]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("gone@"):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos)))
        replies = [
            "452 4.2.2 Mailbox full" if r.startswith("full@") else f"250 2.0.0 <{r}> delivered"
            for r in envelope.rcpt_tos
        ]
        for reply in replies[:-1]:  # aiosmtpd's LMTP sends only the last itself
            await server.push(reply)
        return replies[-1]


def test_an_lmtp_next_hop_answers_each_recipient_on_its_own() -> None:
    hop = PerRecipient()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = asyncio.run_coroutine_threadsafe(
        loop.create_server(lambda: LMTP(hop), sock=sock), loop
    ).result()
    client = relay.RelayDelivery("127.0.0.1", port, lmtp=True, helo="mail.contoso.com")
    message = delivery.Message(
        queue_id="Q",
        connector="",
        mail_from="s@example.org",
        recipients=("a@contoso.com", "full@contoso.com", "gone@contoso.com", "b@contoso.com"),
        content=b"Subject: lmtp\r\n\r\nbody\r\n",
    )
    try:
        answers = client.attempt(message)  # blocking, as on the queue's threads
    finally:
        client.close()

        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert [code for code, _ in answers] == [250, 452, 550, 250]
    assert answers[1][1] == "4.2.2 Mailbox full"
    assert answers[2][1] == "5.1.1 No such mailbox here"
    assert hop.messages == [
        ("s@example.org", ["a@contoso.com", "full@contoso.com", "b@contoso.com"])
    ]


class GoneAfterFirst:
    """Takes the message for its first recipient, then the connection breaks before it
    answers for the others (a crashed LMTP server, a reset)."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await server.push(f"250 2.0.0 <{envelope.rcpt_tos[0]}> delivered")
        assert server.transport is not None
        server.transport.abort()
        return "250 2.0.0 never heard"


def test_an_lmtp_answer_heard_before_the_connection_broke_settles_its_recipient() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = asyncio.run_coroutine_threadsafe(
        loop.create_server(lambda: LMTP(GoneAfterFirst()), sock=sock), loop
    ).result()
    client = relay.RelayDelivery("127.0.0.1", port, lmtp=True, helo="mail.contoso.com")
    message = delivery.Message(
        queue_id="Q",
        connector="",
        mail_from="s@example.org",
        recipients=("a@contoso.com", "b@contoso.com", "c@contoso.com"),
        content=b"Subject: lmtp\r\n\r\nbody\r\n",
    )
    try:
        answers = client.attempt(message)
    finally:
        client.close()

        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    # a@ has it: a later try must not send it again; b@ and c@ are tried again.
    assert [code for code, _ in answers] == [250, 451, 451]
    assert "4.4.2" in answers[1][1]
