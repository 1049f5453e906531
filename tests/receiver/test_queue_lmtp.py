"""The queue's try of one message over LMTP settles each recipient by its own answer after
DATA (RFC 2033). No LMTP server from elsewhere is installed here (Postfix has only the
client), so aiosmtpd's LMTP stands for the next hop, as in test_delivery."""

from __future__ import annotations

from typing import Any

from . import hops


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
    recipients = ("a@contoso.com", "full@contoso.com", "gone@contoso.com", "b@contoso.com")
    answers = hops.attempt(hop, recipients, lmtp=True)
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
    recipients = ("a@contoso.com", "b@contoso.com", "c@contoso.com")
    answers = hops.attempt(GoneAfterFirst(), recipients, lmtp=True)
    # a@ has it: a later try must not send it again; b@ and c@ are tried again.
    assert [code for code, _ in answers] == [250, 451, 451]
    assert "4.4.2" in answers[1][1]
