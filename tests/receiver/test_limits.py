"""Limits and timeouts of a connector, on a running receiver."""

from __future__ import annotations

import time
from typing import Any

import bcrypt
import pytest
from smtpgate.receiver import replies, server
from smtpgate.receiver.users import UserDatabase

from .conftest import PASSWORDS
from .helpers import Raw, plain


def _connector(**extra: Any) -> list[tuple[str, dict[str, Any]]]:
    data: dict[str, Any] = {
        "usage": "Internet",
        "bindings": ["0.0.0.0:25"],
        "remoteIPRanges": ["127.0.0.0/8"],
        "authMechanisms": ["TLS", "BasicAuth"],
        "permissionGroups": ["AnonymousUsers", "ExchangeUsers"],
        "tarpitIntervalSeconds": 0,
    }
    data.update(extra)
    return [("Limited", data)]


def _line(reply: replies.Reply) -> tuple[int, str]:
    return reply.code, reply.line()[4:]


def _greeted(running: Any, source: str = "127.0.0.1") -> Raw:
    raw = Raw(running.port(25), source=source)
    assert raw.reply()[0] == 220
    raw.command("EHLO client.example")
    return raw


def test_recipients_beyond_the_limit_get_452(start: Any) -> None:
    raw = _greeted(start(_connector(maxRecipientsPerMessage=2)))
    raw.command("MAIL FROM:<s@example.org>")
    assert raw.command("RCPT TO:<a@contoso.com>")[0] == 250
    assert raw.command("RCPT TO:<b@contoso.com>")[0] == 250
    assert raw.command("RCPT TO:<c@contoso.com>") == _line(replies.TOO_MANY_RECIPIENTS)


def test_connections_per_source_are_limited(start: Any) -> None:
    running = start(_connector(maxInboundConnectionPerSource=2))
    first, second = _greeted(running, "127.0.0.2"), _greeted(running, "127.0.0.2")
    third = Raw(running.port(25), source="127.0.0.2")
    assert third.reply() == _line(replies.TOO_MANY_FROM_SOURCE)
    assert third.closed()
    assert _greeted(running, "127.0.0.3").command("NOOP")[0] == 250
    first.close()
    time.sleep(0.2)
    assert _greeted(running, "127.0.0.2").command("NOOP")[0] == 250
    assert second.command("NOOP")[0] == 250


def test_percentage_per_source_limits_below_the_count(start: Any) -> None:
    running = start(_connector(maxInboundConnection=100, maxInboundConnectionPercentagePerSource=1))
    _greeted(running, "127.0.0.4")
    extra = Raw(running.port(25), source="127.0.0.4")
    assert extra.reply() == _line(replies.TOO_MANY_FROM_SOURCE)


def test_connections_on_a_connector_are_limited(start: Any) -> None:
    running = start(_connector(maxInboundConnection=2, maxInboundConnectionPercentagePerSource=100))
    _greeted(running, "127.0.0.5")
    _greeted(running, "127.0.0.6")
    extra = Raw(running.port(25), source="127.0.0.7")
    assert extra.reply() == _line(replies.TOO_MANY_CONNECTIONS)
    assert extra.closed()


def test_inactivity_timeout_closes_an_idle_session_without_a_reply(start: Any) -> None:
    running = start(_connector(connectionTimeoutSeconds=30, connectionInactivityTimeoutSeconds=1))
    raw = _greeted(running)
    raw.sock.settimeout(5)
    assert raw.closed()
    assert raw.buffer == b""  # nothing before the close (the README: "without a reply")


def test_connection_timeout_ends_even_a_busy_session(start: Any) -> None:
    running = start(_connector(connectionTimeoutSeconds=2, connectionInactivityTimeoutSeconds=1))
    raw = _greeted(running)
    codes = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            codes.append(raw.command("NOOP")[0])
        except ConnectionError:
            break
        time.sleep(0.3)
    assert codes[-1] == 421 or raw.closed()
    assert 250 in codes


def test_connection_timeout_ends_a_steady_upload(start: Any) -> None:
    # Data lines every 0.3 s keep the session from going idle (and count as no junk): only
    # the connection's deadline ends it, at its own time, with 421.
    running = start(_connector(connectionTimeoutSeconds=2, connectionInactivityTimeoutSeconds=1))
    raw = _greeted(running)
    began = time.monotonic()
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
    assert raw.command("RCPT TO:<a@contoso.com>")[0] == 250
    assert raw.command("DATA")[0] == 354
    raw.sock.settimeout(0.3)
    ended = None
    while ended is None and time.monotonic() - began < 6:
        try:
            raw.send(b"a line of a slow message\r\n")
            ended = raw.reply()
        except TimeoutError:
            continue
        except OSError:
            ended = (0, "")
    assert ended == _line(replies.CONNECTION_TIMEOUT)
    assert 1.5 < time.monotonic() - began < 3.5


def test_protocol_errors_end_the_session(start: Any) -> None:
    raw = _greeted(start(_connector(maxProtocolErrors=2)))
    assert raw.command("BOGUS")[0] == 500
    assert raw.command("RCPT TO:<a@contoso.com>")[0] == 503
    assert raw.command("BOGUS") == _line(replies.TOO_MANY_ERRORS)
    assert raw.closed()


def test_tarpit_delays_refusals_to_anonymous_clients(start: Any) -> None:
    raw = _greeted(start(_connector(tarpitIntervalSeconds=1)))
    raw.command("MAIL FROM:<s@example.org>")
    began = time.monotonic()
    assert raw.command("RCPT TO:<x@foreign.example>")[0] == 550
    refused = time.monotonic() - began
    began = time.monotonic()
    assert raw.command("RCPT TO:<x@contoso.com>")[0] == 250
    accepted = time.monotonic() - began
    assert refused >= 1.0 > accepted


def test_logon_failures_end_the_session(start: Any) -> None:
    raw = _greeted(start(_connector(maxLogonFailures=2)))
    assert raw.command(f"AUTH PLAIN {plain('alice', 'nope')}") == _line(replies.AUTH_FAILED)
    assert raw.command(f"AUTH PLAIN {plain('alice', 'nope')}") == _line(
        replies.TOO_MANY_LOGON_FAILURES
    )
    assert raw.closed()


def test_unknown_and_known_users_take_the_same_time(start: Any) -> None:
    running = start(_connector(maxLogonFailures=1000))
    # A realistic cost factor, so that the work measured outweighs the noise of a busy machine.
    running.runtime.users = UserDatabase(
        {"alice": bcrypt.hashpw(PASSWORDS["alice"].encode(), bcrypt.gensalt(rounds=10))}
    )
    raw = _greeted(running)

    def timed(user: str) -> float:
        began = time.perf_counter()
        assert raw.command(f"AUTH PLAIN {plain(user, 'wrong-password')}")[0] == 535
        return time.perf_counter() - began

    known = sorted(timed("alice") for _ in range(7))[3]
    unknown = sorted(timed("nobody") for _ in range(7))[3]
    assert 0.5 < unknown / known < 2.0
    assert raw.command(f"AUTH PLAIN {plain('alice', PASSWORDS['alice'])}")[0] == 235


def test_header_size_limit(start: Any) -> None:
    running = start(_connector(maxHeaderSize=1000))
    raw = _greeted(running)
    raw.command("MAIL FROM:<s@example.org>")
    raw.command("RCPT TO:<u@contoso.com>")
    raw.command("DATA")
    raw.send(
        b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 60) for i in range(30)) + b"\r\nbody\r\n.\r\n"
    )
    assert raw.reply() == _line(replies.HEADER_TOO_BIG)
    assert running.messages() == []


@pytest.mark.parametrize(("hops", "accepted"), [(2, True), (3, False)])
def test_hop_count_limit(start: Any, hops: int, accepted: bool) -> None:
    running = start(_connector(maxHopCount=3))
    raw = _greeted(running)
    raw.command("MAIL FROM:<s@example.org>")
    raw.command("RCPT TO:<u@contoso.com>")
    raw.command("DATA")
    raw.send(b"Received: from a\r\n" * hops + b"Subject: loop\r\n\r\nbody\r\n.\r\n")
    code, _ = raw.reply()
    assert (code == 250) is accepted
    if not accepted:
        assert code == replies.HOP_COUNT_EXCEEDED.code


def test_overlong_command_line_gets_500_and_the_session_goes_on(start: Any) -> None:
    raw = _greeted(start(_connector()))
    raw.send(b"NOOP " + b"x" * 100_000 + b"\r\n")
    assert raw.reply()[0] == 500
    assert raw.command("NOOP")[0] == 250


@pytest.mark.parametrize("path", ["a@", "<a@b..c>", "<@contoso.com>", "<a@>"])
def test_malformed_paths_get_553_and_the_session_goes_on(start: Any, path: str) -> None:
    raw = _greeted(start(_connector()))
    assert raw.command(f"MAIL FROM:{path}")[0] == 553
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
    assert raw.command(f"RCPT TO:{path}")[0] == 553
    assert raw.command("RCPT TO:<u@contoso.com>")[0] == 250


def test_overlong_data_line_is_refused(start: Any) -> None:
    running = start(_connector())
    raw = _greeted(running)
    raw.command("MAIL FROM:<s@example.org>")
    raw.command("RCPT TO:<u@contoso.com>")
    raw.command("DATA")
    raw.send(b"Subject: long\r\n\r\n" + b"y" * 200_000 + b"\r\n.\r\n")
    assert raw.reply()[0] == 500
    assert running.messages() == []
    assert raw.command("NOOP")[0] == 250


def test_enhanced_status_codes_can_be_turned_off(start: Any) -> None:
    raw = _greeted(start(_connector(enhancedStatusCodesEnabled=False)))
    raw.command("MAIL FROM:<s@example.org>")
    assert raw.command("RCPT TO:<x@foreign.example>") == (550, replies.RELAY_DENIED.text)


@pytest.mark.parametrize(
    ("fields", "expected", "absent"),
    [
        (
            {},
            {"SIZE 37748736", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "8BITMIME", "STARTTLS"},
            {"CHUNKING"},
        ),
        (
            {"sizeEnabled": "EnabledWithoutValue", "pipeliningEnabled": False},
            {"SIZE"},
            {"PIPELINING"},
        ),
        (
            {
                "sizeEnabled": "Disabled",
                "deliveryStatusNotificationEnabled": False,
                "eightBitMimeEnabled": False,
            },
            set(),
            {"DSN", "8BITMIME", "SIZE 37748736", "SIZE"},
        ),
    ],
)
def test_ehlo_advertises_exactly_what_the_connector_enables(
    start: Any, fields: dict, expected: set, absent: set
) -> None:
    raw = Raw(start(_connector(**fields)).port(25))
    raw.reply()
    keywords = set(raw.command("EHLO client.example")[1].splitlines()[1:])
    assert expected <= keywords
    assert not (absent & keywords)


def test_dsn_parameters_are_accepted_when_dsn_is_on(start: Any) -> None:
    raw = _greeted(start(_connector()))
    assert raw.command("MAIL FROM:<s@example.org> RET=HDRS ENVID=abc")[0] == 250
    assert raw.command("RCPT TO:<u@contoso.com> NOTIFY=SUCCESS,FAILURE")[0] == 250


@pytest.mark.parametrize(("source", "user"), [("IPAddress", None), ("User", "alice")])
def test_message_rate_limit_per_source(start: Any, source: str, user: str | None) -> None:
    running = start(_connector(messageRateLimit=2, messageRateSource=source))

    def send(sender_ip: str) -> tuple[int, str]:
        raw = _greeted(running, sender_ip)
        if user:
            assert raw.command(f"AUTH PLAIN {plain(user, PASSWORDS[user])}")[0] == 235
        reply = raw.command(f"MAIL FROM:<{user or 's'}@contoso.com>")
        if reply[0] != 250:
            return reply
        raw.command("RCPT TO:<u@contoso.com>")
        raw.command("DATA")
        raw.send(b"Subject: rate\r\n\r\nbody\r\n.\r\n")
        return raw.reply()

    assert send("127.0.0.11")[0] == 250
    assert send("127.0.0.11")[0] == 250
    assert send("127.0.0.11") == _line(replies.MESSAGE_RATE_EXCEEDED)
    # Another address (or, counted per user, the same user elsewhere).
    other = send("127.0.0.12")
    if user:
        assert other == _line(replies.MESSAGE_RATE_EXCEEDED)
    else:
        assert other[0] == 250


def _message_from(running: Any, source: str) -> tuple[int, str]:
    raw = _greeted(running, source)
    assert raw.command("MAIL FROM:<s@example.org>")[0] == 250
    raw.command("RCPT TO:<u@contoso.com>")
    raw.command("DATA")
    raw.send(b"Subject: rate\r\n\r\nbody\r\n.\r\n")
    return raw.reply()


def test_the_rate_window_forgets_sources_once_the_window_has_passed(start: Any) -> None:
    running = start(_connector(messageRateLimit=5))
    now = [1000.0]
    running.runtime.rates = server.RateWindow(clock=lambda: now[0])
    for n in range(20):
        assert _message_from(running, f"127.0.0.{20 + n}")[0] == 250
    assert len(running.runtime.rates.stamps) == 20
    now[0] += 61  # the window has passed: none of the 20 sends any more
    assert _message_from(running, "127.0.0.99")[0] == 250
    assert set(running.runtime.rates.stamps) == {"ip:127.0.0.99"}
