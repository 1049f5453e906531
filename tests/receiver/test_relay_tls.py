"""STARTTLS to the next hop (nextHop.tls): Opportunistic encrypts wherever the next hop
offers it and otherwise, or after a failed handshake, goes in the clear; Required never
sends anything in the clear (451 4.7.4 or 4.7.5, and the queue tries again); Off never
starts TLS. Against aiosmtpd next hops on loopback (SMTP and LMTP) that record whether
each message came encrypted, and a real Postfix whose Received header says so."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import smtplib
import ssl
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from smtpgate.connectors import specs
from smtpgate.connectors.enums import NextHopTls
from smtpgate.receiver import delivery, relay

from . import hops, postfix_hop
from .conftest import Pki


class Recorder:
    """Takes every message, noting whether its session was encrypted; counts greetings;
    with ``refuse_greeting_on_tls``, answers EHLO and HELO after STARTTLS with 554."""

    def __init__(self, refuse_greeting_on_tls: bool = False) -> None:
        self.encrypted: list[bool] = []
        self.greetings = 0
        self.refuse = refuse_greeting_on_tls

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.greetings += 1
        if self.refuse and session.ssl is not None:
            return ["554 5.7.0 not after TLS"]
        session.host_name = hostname
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        if self.refuse and session.ssl is not None:
            return "554 5.7.0 not after TLS"
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.encrypted.append(session.ssl is not None)
        return "250 2.0.0 OK"  # one recipient: LMTP's one answer too


def _message() -> delivery.Message:
    return delivery.Message(
        queue_id="Q1",
        connector="Internet",
        mail_from="s@example.org",
        recipients=("u@contoso.com",),
        content=b"Subject: tls\r\n\r\nbody\r\n",
    )


def _deliver(port: int, tls: str, lmtp: bool = False, messages: int = 1) -> None:
    sender = relay.RelayDelivery(
        "127.0.0.1", port, lmtp=lmtp, helo="mail.contoso.com", tls=NextHopTls(tls)
    )

    async def send() -> None:
        for _ in range(messages):
            await sender.deliver(_message())

    try:
        asyncio.run(send())
    finally:
        sender.close()


def _server_context(pki: Pki, client_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    if client_certificate:
        # A handshake that fails: the next hop wants a certificate the relay does not have
        # (TLS 1.2, where the refusal comes within the handshake).
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca_file)
    return context


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_opportunistic_encrypts_where_the_next_hop_offers_starttls(pki: Pki, lmtp: bool) -> None:
    hop = Recorder()
    # The next hop refuses MAIL in the clear: only an encrypted message gets through.
    with hops.serving(
        hop, lmtp, tls_context=_server_context(pki), require_starttls=not lmtp
    ) as port:
        _deliver(port, "Opportunistic", lmtp)
        _deliver(port, "Required", lmtp)
    assert hop.encrypted == [True, True]


def test_opportunistic_goes_in_the_clear_where_none_is_offered() -> None:
    hop = Recorder()
    with hops.serving(hop) as port:
        _deliver(port, "Opportunistic")
    assert hop.encrypted == [False]


@pytest.mark.parametrize(
    ("failure", "said"),
    [("handshake", ""), ("greeting", "554 5.7.0 not after TLS")],
    ids=["the-handshake-fails", "no-greeting-after-the-handshake"],
)
def test_a_failed_starttls_sends_in_the_clear_on_a_new_connection_or_gets_451(
    pki: Pki, failure: str, said: str
) -> None:
    """Opportunistic: in the clear on a new connection; Required: 451 4.7.5, nothing sent."""
    hop = Recorder(refuse_greeting_on_tls=failure == "greeting")
    context = _server_context(pki, client_certificate=failure == "handshake")
    with hops.serving(hop, tls_context=context) as port:
        _deliver(port, "Opportunistic")
        with pytest.raises(delivery.DeliveryError) as refused:
            _deliver(port, "Required")
    assert hop.encrypted == [False]
    assert refused.value.code == 451
    assert refused.value.text.startswith("4.7.5 STARTTLS to next hop 127.0.0.1:")
    assert said in refused.value.text


def test_a_connection_in_the_clear_after_a_failed_handshake_is_not_kept(pki: Pki) -> None:
    """Each message tries STARTTLS again: two greetings per message (the failed try and
    the connection in the clear), where a kept connection would need none."""
    hop = Recorder()
    with hops.serving(hop, tls_context=_server_context(pki, client_certificate=True)) as port:
        _deliver(port, "Opportunistic", messages=3)
    assert hop.encrypted == [False] * 3
    assert hop.greetings == 6


def test_required_sends_nothing_in_the_clear() -> None:
    hop = Recorder()
    with hops.serving(hop) as port:
        with pytest.raises(delivery.DeliveryError) as refused:
            _deliver(port, "Required")
        # The queue's try: an exception, so the message stays queued and is tried again.
        sender = relay.RelayDelivery("127.0.0.1", port, tls=NextHopTls.Required)
        try:
            with pytest.raises(smtplib.SMTPResponseException) as queued:
                sender.attempt(_message())
        finally:
            sender.close()
    assert hop.encrypted == []
    assert (refused.value.code, queued.value.smtp_code) == (451, 451)
    assert "4.7.4 next hop 127.0.0.1:" in refused.value.text
    assert "offers no STARTTLS, and nextHop.tls is Required" in refused.value.text
    assert str(queued.value) == refused.value.text  # as the queue's record gives the reason


def test_off_never_starts_tls(pki: Pki) -> None:
    hop = Recorder()
    with hops.serving(hop, tls_context=_server_context(pki)) as port:
        _deliver(port, "Off")
    assert hop.encrypted == [False]


def test_the_server_config_carries_the_mode_to_the_relay_and_the_queue(
    tmp_path: pathlib.Path,
) -> None:
    hop = specs.NextHop.model_validate(
        {"type": "Smtp", "host": "hub.contoso.com", "port": 25, "tls": "Required"}
    )
    assert isinstance(made := delivery.from_next_hop(hop), relay.RelayDelivery)
    assert made.tls == "Required"
    queued = hop.model_copy(update={"mode": "StoreAndForward"})
    made = delivery.from_next_hop(queued, spool=str(tmp_path / "spool"))
    try:
        assert made.relay.tls == "Required"  # type: ignore[attr-defined]
    finally:
        made.close()
    plain = specs.NextHop.model_validate({"type": "Lmtp", "host": "dovecot", "port": 24})
    assert plain.tls_mode == "Opportunistic"
    with pytest.raises(ValueError, match="tls is for Smtp and Lmtp next hops"):
        specs.NextHop.model_validate({"type": "Maildir", "tls": "Required"})


@pytest.fixture
def tls_hop(pki: Pki) -> Iterator[postfix_hop.PostfixHop]:
    if (reason := postfix_hop.available()) is not None:
        pytest.skip(reason)
    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-hop-"))
    hop = postfix_hop.PostfixHop(
        work,
        settings=(
            f"smtpd_tls_cert_file = {pki.cert_file}\n"
            f"smtpd_tls_key_file = {pki.key_file}\n"
            "smtpd_tls_security_level = may\n"
            "smtpd_tls_received_header = yes\n"
        ),
    )
    hop.start()
    yield hop
    hop.stop()
    shutil.rmtree(work, ignore_errors=True)


def test_postfix_as_next_hop_receives_encrypted_or_in_the_clear_as_asked(
    tls_hop: postfix_hop.PostfixHop,
) -> None:
    _deliver(tls_hop.port, "Opportunistic")
    _deliver(tls_hop.port, "Off")
    received = sorted(
        (m["Received"] for m in tls_hop.wait_delivered(2, 30)), key=lambda r: "ESMTPS" not in r
    )
    assert len(received) == 2
    assert "with ESMTPS" in received[0] and "using TLS" in received[0], received[0]
    assert "with ESMTP " in received[1] and "using TLS" not in received[1], received[1]
