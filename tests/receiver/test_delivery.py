"""Delivery to the next hop: relayed synchronously over SMTP and LMTP, refusals passed back."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP
from smtpgate.receiver import delivery, relay

from .conftest import PASSWORDS
from .helpers import Raw, custom_connector, plain


class NextHop:
    """A real SMTP (or LMTP) server on loopback standing for the organisation's next hop."""

    def __init__(self, refuse_rcpt: str | None = None, refuse_data: str | None = None) -> None:
        self.refuse_rcpt, self.refuse_data = refuse_rcpt, refuse_data
        self.lmtp = False
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.connections: list[Any] = []  # the server side of every connection made
        self.drop_at_data = False  # go away before answering a message

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.refuse_rcpt and address == self.refuse_rcpt:
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.drop_at_data:
            server.transport.close()
            return "250 never seen"
        if self.refuse_data:
            return self.refuse_data
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        if self.lmtp:
            # RFC 2033: one reply per recipient (aiosmtpd's LMTP sends only the last).
            for recipient in envelope.rcpt_tos[:-1]:
                await server.push(f"250 2.0.0 <{recipient}> delivered")
        return "250 2.0.0 Accepted by the next hop"


def _serve(running: Any, hop: NextHop, lmtp: bool = False) -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    factory = LMTP if lmtp else SMTP
    hop.lmtp = lmtp

    def connection() -> Any:
        protocol = factory(hop)
        hop.connections.append(protocol)
        return protocol

    async def start() -> Any:
        return await asyncio.get_running_loop().create_server(connection, sock=sock)

    server = running.call(start())
    running.hops.append(server)
    return int(port)


def _connector() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("Internet", {"usage": "Internet", "bindings": ["0.0.0.0:25"], "tarpitIntervalSeconds": 0})
    ]


def _send(running: Any, recipients: list[str]) -> tuple[int, str]:
    raw = Raw(running.port(25), source="127.0.0.8")
    raw.reply()
    raw.command("EHLO client.example")
    raw.command("MAIL FROM:<sender@example.org>")
    for recipient in recipients:
        assert raw.command(f"RCPT TO:<{recipient}>")[0] == 250
    raw.command("DATA")
    raw.send(b"Subject: relayed\r\n\r\n..leading dot line\r\nbody\r\n.\r\n")
    return raw.reply()


@pytest.fixture
def relaying(start: Any) -> Iterator[Any]:
    made: list[Any] = []

    def make(hop: NextHop, lmtp: bool = False, idle_seconds: float = 20) -> Any:
        running = start(_connector())
        running.hops = []
        port = _serve(running, hop, lmtp)
        running.runtime.delivery = relay.RelayDelivery(
            "127.0.0.1", port, lmtp=lmtp, helo="mail.contoso.com", idle_seconds=idle_seconds
        )
        made.append(running)
        return running

    yield make
    for running in made:
        for server in running.hops:
            server.close()
            running.call(server.wait_closed())


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_message_is_relayed_before_the_client_hears_250(relaying: Any, lmtp: bool) -> None:
    hop = NextHop()
    running = relaying(hop, lmtp)
    code, _ = _send(running, ["a@contoso.com", "b@contoso.com"])
    assert code == 250
    assert len(hop.messages) == 1
    sender, recipients, content = hop.messages[0]
    assert sender == "sender@example.org" and recipients == ["a@contoso.com", "b@contoso.com"]
    assert (
        b'via connector "Internet"' in content and b"from client.example ([127.0.0.8])" in content
    )
    assert b'principal="NT AUTHORITY\\ANONYMOUS LOGON"' in content
    assert b"\r\n.leading dot line\r\n" in content


def test_next_hop_refusal_at_rcpt_is_passed_back_and_nothing_is_delivered(relaying: Any) -> None:
    hop = NextHop(refuse_rcpt="b@contoso.com")
    running = relaying(hop)
    assert _send(running, ["a@contoso.com", "b@contoso.com"]) == (550, "5.1.1 No such mailbox here")
    assert hop.messages == []


def test_next_hop_refusal_at_data_is_passed_back(relaying: Any) -> None:
    hop = NextHop(refuse_data="554 5.7.1 Message rejected as spam")
    running = relaying(hop)
    assert _send(running, ["a@contoso.com"]) == (554, "5.7.1 Message rejected as spam")


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_one_connection_to_the_next_hop_carries_message_after_message(
    relaying: Any, lmtp: bool
) -> None:
    hop = NextHop(refuse_rcpt="nobody@contoso.com")
    running = relaying(hop, lmtp)
    for n in range(3):
        assert _send(running, [f"u{n}@contoso.com"])[0] == 250
    assert _send(running, ["nobody@contoso.com"])[0] == 550  # refused, RSET: still clean
    assert _send(running, ["last@contoso.com"])[0] == 250
    assert len(hop.messages) == 4 and len(hop.connections) == 1


def test_a_connection_the_next_hop_closed_is_replaced_before_the_message(
    relaying: Any,
) -> None:
    hop = NextHop()
    running = relaying(hop)
    assert _send(running, ["a@contoso.com"])[0] == 250
    hop.connections[0].transport.close()  # the next hop ends the idle connection
    assert _send(running, ["b@contoso.com"])[0] == 250
    assert [m[1] for m in hop.messages] == [["a@contoso.com"], ["b@contoso.com"]]
    assert len(hop.connections) == 2


def test_connections_idle_too_long_are_not_used_again(relaying: Any) -> None:
    hop = NextHop()
    running = relaying(hop, idle_seconds=0)
    for n in range(3):
        assert _send(running, [f"u{n}@contoso.com"])[0] == 250
    assert len(hop.messages) == 3 and len(hop.connections) == 3


def test_a_next_hop_that_fails_mid_message_gives_451_and_a_new_connection_next(
    relaying: Any,
) -> None:
    hop = NextHop()
    running = relaying(hop)
    assert _send(running, ["a@contoso.com"])[0] == 250
    hop.drop_at_data = True
    assert _send(running, ["b@contoso.com"])[0] == 451
    hop.drop_at_data = False
    assert _send(running, ["c@contoso.com"])[0] == 250
    assert [m[1] for m in hop.messages] == [["a@contoso.com"], ["c@contoso.com"]]
    assert len(hop.connections) == 2


def test_unreachable_next_hop_gives_451_never_250(start: Any) -> None:
    running = start(_connector())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    running.runtime.delivery = relay.RelayDelivery("127.0.0.1", dead_port, timeout=5)
    code, text = _send(running, ["a@contoso.com"])
    assert code == 451 and text.startswith("4.3.0")


def test_queue_ids_are_sixteen_hex_digits_and_do_not_repeat() -> None:
    ids = [delivery.new_queue_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and int(i, 16) >= 0 and i == i.upper() for i in ids)


def test_auth_is_prompt_while_the_next_hop_hangs(start: Any) -> None:
    running = start(custom_connector("Client"))
    # A next hop that takes connections and never says a word.
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(128)
    running.runtime.delivery = relay.RelayDelivery(
        "127.0.0.1", hanging.getsockname()[1], timeout=30
    )
    # More messages waiting on it than the event loop's default pool has threads.
    stuck = []
    for n in range(min(32, (os.cpu_count() or 1) + 4) + 2):
        raw = Raw(running.port(25), source=f"127.0.1.{n + 1}")
        raw.reply()
        raw.command("EHLO client.example")
        raw.command("MAIL FROM:<s@example.org>")
        raw.command("RCPT TO:<u@contoso.com>")
        assert raw.command("DATA")[0] == 354
        raw.send(b"Subject: stuck\r\n\r\nbody\r\n.\r\n")
        stuck.append(raw)
    time.sleep(0.5)
    try:
        raw = Raw(running.port(25), source="127.0.2.1")
        raw.reply()
        raw.command("EHLO client.example")
        began = time.monotonic()
        assert raw.command(f"AUTH PLAIN {plain('alice', PASSWORDS['alice'])}")[0] == 235
        assert time.monotonic() - began < 2
    finally:
        hanging.close()  # the relays waiting on it fail now
    assert all(raw.reply()[0] == 451 for raw in stuck)
