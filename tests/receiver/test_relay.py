"""Relay honesty: MAIL and RCPT parameters reach a next hop that takes them and are not
offered when it does not; LMTP's per-recipient answers deliver each recipient once; the
next hop's reply text reaches the client as one line."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP
from smtpgate.receiver import relay

from .helpers import Raw


class Hop:
    """A next hop that offers DSN (or not) and 8BITMIME (or not), records what it was given
    and answers LMTP's DATA per recipient from ``after_data``."""

    def __init__(self, dsn: bool = True, eight_bit: bool = True) -> None:
        self.dsn, self.eight_bit = dsn, eight_bit
        self.mail: list[list[str]] = []
        self.rcpt: list[tuple[str, list[str]]] = []
        self.delivered: list[tuple[str, bytes]] = []  # (recipient, content)
        self.after_data: dict[str, list[str]] = {}  # recipient → its next answers
        self.data_reply: str | None = None
        self.lines: list[str] = []  # MAIL and RCPT as they arrived

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        kept = [r for r in responses if self.eight_bit or "8BITMIME" not in r]
        return kept[:-1] + (["250-DSN"] if self.dsn else []) + kept[-1:]

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.mail.append(options)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.rcpt.append((address, options))
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        answers = []
        for recipient in envelope.rcpt_tos:
            queued = self.after_data.get(recipient)
            answer = queued.pop(0) if queued else "250 2.0.0 OK"
            if answer.startswith("250"):
                self.delivered.append((recipient, envelope.original_content))
            answers.append(answer)
        if isinstance(server, LMTP):
            for answer in answers[:-1]:
                await server.push(answer)
        return answers[-1]


class _TakesDsn:
    event_handler: Hop

    async def smtp_MAIL(self, arg: str) -> None:
        self.event_handler.lines.append(f"MAIL {arg}")
        await super().smtp_MAIL(arg)  # type: ignore[misc]

    async def smtp_RCPT(self, arg: str) -> None:
        self.event_handler.lines.append(f"RCPT {arg}")
        await super().smtp_RCPT(arg)  # type: ignore[misc]

    def _getparams(self, params: Any) -> Any:  # DSN's parameters are known here
        result = super()._getparams(params)  # type: ignore[misc]
        for key in ("RET", "ENVID", "NOTIFY", "ORCPT"):
            if result is not None:
                result.pop(key, None)
        return result


class DsnSMTP(_TakesDsn, SMTP):
    pass


class DsnLMTP(_TakesDsn, LMTP):
    pass


@pytest.fixture
def relayed(start: Any) -> Iterator[Any]:
    made: list[tuple[Any, Any]] = []

    def make(hop: Hop, lmtp: bool = False) -> Any:
        running = start(
            [
                (
                    "Internet",
                    {"usage": "Internet", "bindings": ["0.0.0.0:25"], "tarpitIntervalSeconds": 0},
                )
            ]
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        factory = DsnLMTP if lmtp else DsnSMTP

        async def serve() -> Any:
            return await asyncio.get_running_loop().create_server(
                lambda: factory(hop, decode_data=False), sock=sock
            )

        server = running.call(serve())
        made.append((running, server))
        running.runtime.delivery = relay.RelayDelivery(
            "127.0.0.1", sock.getsockname()[1], lmtp=lmtp, helo="mail.contoso.com"
        )
        return running

    yield make
    for running, server in made:
        server.close()
        running.call(server.wait_closed())


def _session(running: Any) -> tuple[Raw, str]:
    raw = Raw(running.port(25), source="127.0.0.8")
    raw.reply()
    return raw, raw.command("EHLO client.example")[1]


def _send(
    running: Any, mail: str, rcpts: list[str], content: bytes = b"Subject: s\r\n\r\nbody\r\n"
) -> tuple[int, str]:
    raw, _ = _session(running)
    assert raw.command(f"MAIL FROM:<s@example.org>{mail}")[0] == 250
    for rcpt in rcpts:
        assert raw.command(f"RCPT TO:{rcpt}")[0] == 250
    assert raw.command("DATA")[0] == 354
    raw.send(content + b".\r\n")
    return raw.reply()


def test_mail_and_rcpt_parameters_reach_a_next_hop_that_takes_them(relayed: Any) -> None:
    hop = Hop()
    running = relayed(hop)
    reply = _send(
        running,
        " BODY=8BITMIME RET=HDRS ENVID=Qq1 SIZE=90",
        ["<a@contoso.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@contoso.com", "<b@contoso.com>"],
        b"Subject: caf\xc3\xa9\r\n\r\n8-bit body \xc3\xa9\r\n",
    )
    assert reply[0] == 250
    [options] = hop.mail
    size = len(hop.delivered[0][1])
    assert sorted(options) == sorted(["BODY=8BITMIME", "RET=HDRS", "ENVID=QQ1", f"SIZE={size}"])
    assert hop.rcpt == [
        ("a@contoso.com", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=RFC822;A@CONTOSO.COM"]),
        ("b@contoso.com", []),
    ]
    # As the client wrote them: ENVID and ORCPT are case-sensitive.
    assert hop.lines == [
        f"MAIL FROM:<s@example.org> SIZE={size} BODY=8BITMIME RET=HDRS ENVID=Qq1",
        "RCPT TO:<a@contoso.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@contoso.com",
        "RCPT TO:<b@contoso.com>",
    ]


def test_what_the_next_hop_lacks_is_not_offered_nor_passed_on(relayed: Any) -> None:
    hop = Hop(dsn=False, eight_bit=False)
    running = relayed(hop)
    _, ehlo = _session(running)
    assert "DSN" in ehlo.splitlines()  # not known yet: the connector's own
    # Nothing of DSN goes to a next hop without it (it would refuse the message).
    assert _send(running, " RET=HDRS", ["<a@contoso.com> NOTIFY=NEVER"])[0] == 250
    assert [o.split("=")[0] for o in hop.mail[0]] == ["SIZE"]
    assert hop.rcpt == [("a@contoso.com", [])]
    raw, ehlo = _session(running)
    assert "DSN" not in ehlo.splitlines() and "8BITMIME" not in ehlo.splitlines()
    assert raw.command("MAIL FROM:<s@example.org> RET=HDRS")[0] == 555
    # Declared 8-bit: 7-bit content goes on as it is, 8-bit content cannot.
    assert _send(running, " BODY=8BITMIME", ["<a@contoso.com>"])[0] == 250
    code, text = _send(running, " BODY=8BITMIME", ["<a@contoso.com>"], b"S: \xe9\r\n\r\n\xe9\r\n")
    assert (code, text.split()[0]) == (554, "5.6.3")
    assert len(hop.delivered) == 2


def test_lmtp_partial_failure_delivers_each_recipient_once(relayed: Any) -> None:
    hop = Hop()
    hop.after_data = {"b@contoso.com": ["452 4.2.2 Mailbox full"]}
    running = relayed(hop, lmtp=True)
    rcpts = ["<a@contoso.com>", "<b@contoso.com>", "<c@contoso.com>"]
    code, text = _send(running, "", rcpts)
    assert code == 451 and "a@contoso.com, c@contoso.com" in text and "Mailbox full" in text
    assert _send(running, "", rcpts)[0] == 250  # the client's retry: b only
    assert sorted(r for r, _ in hop.delivered) == [
        "a@contoso.com",
        "b@contoso.com",
        "c@contoso.com",
    ]
    assert [r for r, _ in hop.rcpt][-1:] == ["b@contoso.com"]


def test_lmtp_permanent_failure_of_one_recipient_is_reported_after_the_others_have_it(
    relayed: Any,
) -> None:
    hop = Hop()
    hop.after_data = {"b@contoso.com": ["550 5.1.1 No such user"] * 2}
    running = relayed(hop, lmtp=True)
    rcpts = ["<a@contoso.com>", "<b@contoso.com>"]
    assert _send(running, "", rcpts)[0] == 451  # a has it; b is tried again
    code, text = _send(running, "", rcpts)
    assert code == 550 and "No such user" in text and "already delivered to a@contoso.com" in text
    assert [r for r, _ in hop.delivered] == ["a@contoso.com"]


def test_lmtp_failure_for_every_recipient_is_passed_back(relayed: Any) -> None:
    hop = Hop()
    hop.after_data = {"a@contoso.com": ["550 5.1.1 No"], "b@contoso.com": ["452 4.2.2 Full"]}
    running = relayed(hop, lmtp=True)
    assert _send(running, "", ["<a@contoso.com>", "<b@contoso.com>"]) == (452, "4.2.2 Full")
    assert hop.delivered == []


def test_next_hop_reply_lines_reach_the_client_as_one_line(relayed: Any) -> None:
    hop = Hop()
    hop.data_reply = "554-5.7.1 first line\r\n554 5.7.1 second\rline"
    running = relayed(hop)
    raw, _ = _session(running)
    raw.command("MAIL FROM:<s@example.org>")
    raw.command("RCPT TO:<a@contoso.com>")
    raw.command("DATA")
    raw.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
    code, text = raw.reply()
    assert code == 554 and "\n" not in text and "\r" not in text
    assert text == "5.7.1 first line 5.7.1 second line"
    assert raw.command("NOOP")[0] == 250  # nothing left over to read as a reply
