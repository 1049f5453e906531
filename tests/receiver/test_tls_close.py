"""The end of a TLS session: once its last reply (221, 421, a closing 5xx) is sent with the
server's close_notify, a client that keeps the connection open without answering holds its
connection slot for ``engine.TLS_CLOSE_GRACE`` (1 s), not asyncio's 30 s; a client that
answers close_notify gets the whole reply and a clean TLS close."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from smtpgate.receiver import engine, replies

from .conftest import FQDN
from .helpers import Raw, openssl_starttls

# What "promptly" means here: the grace, and room for a busy machine.
PROMPT = engine.TLS_CLOSE_GRACE + 1.5


def _connector(name: str, **extra: Any) -> list[tuple[str, dict[str, Any]]]:
    """One connection per source, so that a held slot shows as a refused second one."""
    data: dict[str, Any] = {
        "usage": "Internet",
        "bindings": ["0.0.0.0:25"],
        "remoteIPRanges": ["127.0.0.0/8"],
        "tarpitIntervalSeconds": 0,
        "maxInboundConnectionPerSource": 1,
        **extra,
    }
    return [(name, data)]


def _over_tls(running: Any, pki: Any, source: str) -> Raw:
    raw = Raw(running.port(25), source=source)
    assert raw.reply()[0] == 220
    raw.command("EHLO client.example")
    assert raw.command("STARTTLS")[0] == 220
    raw.starttls(str(pki.ca_file), FQDN)
    assert raw.command("EHLO client.example")[0] == 250
    return raw


def _seconds_until_accepted(running: Any, source: str, began: float) -> float:
    """Connect from ``source`` again and again until a connection gets the banner; the
    seconds from ``began`` until then (a refused one gets 421 too many from source)."""
    while True:
        raw = Raw(running.port(25), source=source)
        code, _ = raw.reply()
        raw.close()
        if code == 220:
            return time.monotonic() - began
        assert (code, _) == (replies.TOO_MANY_FROM_SOURCE.code, _)
        assert time.monotonic() - began < 5, "the slot was still held after 5 s"
        time.sleep(0.05)


def _open_sessions(connector: str) -> float:
    return REGISTRY.get_sample_value("smtpgate_sessions_open", {"connector": connector}) or 0.0


def _seconds_until_no_open_session(connector: str, began: float) -> float:
    while _open_sessions(connector) > 0:
        assert time.monotonic() - began < 5, "the session was still open after 5 s"
        time.sleep(0.02)
    return time.monotonic() - began


def _freed_within(running: Any, connector: str, source: str, seconds: float) -> None:
    """From now, the session leaves the open-sessions gauge and ``source`` gets a
    connection again, each within ``seconds``."""
    began = time.monotonic()
    assert _seconds_until_no_open_session(connector, began) < seconds
    assert _seconds_until_accepted(running, source, began) < seconds


def test_client_idling_after_quit_on_tls_frees_its_source_slot_within_the_grace(
    start: Any, pki: Any
) -> None:
    running = start(_connector("TlsQuit"))
    lingering = _over_tls(running, pki, "127.0.0.21")
    assert _open_sessions("TlsQuit") == 1
    assert lingering.command("QUIT")[0] == 221
    # The client neither answers close_notify nor closes; it holds the TCP connection.
    _freed_within(running, "TlsQuit", "127.0.0.21", PROMPT)
    assert running.runtime.counters.by_source.get(("TlsQuit", "127.0.0.21"), 0) <= 1
    # It got the server's close_notify, then the end of the connection.
    lingering.sock.settimeout(1)
    assert lingering.closed()


def test_client_idling_after_421_on_tls_frees_its_source_slot_within_the_grace(
    start: Any, pki: Any
) -> None:
    running = start(_connector("TlsErrors", maxProtocolErrors=1))
    lingering = _over_tls(running, pki, "127.0.0.22")
    assert lingering.command("BOGUS")[0] == 500
    assert lingering.command("BOGUS") == (
        replies.TOO_MANY_ERRORS.code,
        replies.TOO_MANY_ERRORS.line()[4:],
    )
    _freed_within(running, "TlsErrors", "127.0.0.22", PROMPT)


def test_client_idling_after_the_inactivity_timeout_on_tls_frees_its_slot_within_the_grace(
    start: Any, pki: Any
) -> None:
    running = start(_connector("TlsIdle", connectionInactivityTimeoutSeconds=1))
    _over_tls(running, pki, "127.0.0.23")  # then silent, the connection kept open
    # Closed at the timeout (1 s), free again within the grace after it.
    _freed_within(running, "TlsIdle", "127.0.0.23", 1 + PROMPT)


def test_client_idling_after_the_connection_timeout_on_tls_frees_its_slot_within_the_grace(
    start: Any, pki: Any
) -> None:
    running = start(
        _connector("TlsDeadline", connectionTimeoutSeconds=2, connectionInactivityTimeoutSeconds=1)
    )
    raw = _over_tls(running, pki, "127.0.0.26")
    # Busy (a NOOP after 0.3 s of quiet) until the deadline's 421 comes unasked, then
    # silent with the connection kept open: nothing sent after it.
    raw.sock.settimeout(0.3)
    while True:
        try:
            code, _ = raw.reply()
            break
        except TimeoutError:
            assert raw.command("NOOP")[0] == 250
    assert code == replies.CONNECTION_TIMEOUT.code
    _freed_within(running, "TlsDeadline", "127.0.0.26", PROMPT)


def test_client_answering_close_notify_gets_all_of_221_and_a_clean_close(
    start: Any, pki: Any
) -> None:
    running = start(_connector("TlsClean"))
    raw = _over_tls(running, pki, "127.0.0.24")
    raw.send(b"QUIT\r\n")
    time.sleep(0.3)  # slower than a client on loopback, well within the grace
    began = time.monotonic()
    assert raw.reply() == (221, "Bye")
    tls = raw.sock
    assert isinstance(tls, ssl.SSLSocket)
    # unwrap sends the client's close_notify and needs the server's: a cut connection
    # raises here instead.
    plain = tls.unwrap()
    plain.settimeout(2)
    assert plain.recv(1) == b""  # then the server ends the TCP connection
    plain.close()
    assert _seconds_until_no_open_session("TlsClean", began) < 0.5


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_kept_open_gets_221_and_ends_cleanly(start: Any, pki: Any) -> None:
    """openssl s_client with its input held open after QUIT: it answers the server's
    close_notify, so it is the well-behaved client and ends at once with exit code 0."""
    running = start(_connector("TlsOpenssl"))
    client = subprocess.Popen(
        openssl_starttls(running.port(25), pki.ca_file, "-quiet"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        seen = b""
        while b"250 " not in seen:  # the EHLO after the handshake
            chunk = client.stdout.read1(4096)
            assert chunk, seen
            seen += chunk
        client.stdin.write(b"QUIT\r\n")
        client.stdin.flush()
        began = time.monotonic()
        assert client.wait(5) == 0
        seen += client.stdout.read()
        assert b"\r\n221 " in seen
        assert _seconds_until_no_open_session("TlsOpenssl", began) < 0.5
    finally:
        client.stdin.close()
        if client.poll() is None:
            client.kill()
            client.wait()
        client.stdout.close()


def test_plain_client_idling_after_quit_is_closed_at_once(start: Any) -> None:
    """Without TLS there is nothing to wait for: the 221, then the end of the connection."""
    running = start(_connector("PlainQuit"))
    raw = Raw(running.port(25), source="127.0.0.25")
    raw.reply()
    raw.command("EHLO client.example")
    assert raw.command("QUIT")[0] == 221
    began = time.monotonic()
    assert _seconds_until_no_open_session("PlainQuit", began) < 0.5
    raw.sock.settimeout(1)
    assert raw.closed()


def test_stopping_cuts_a_tls_session_still_in_its_close(start: Any, pki: Any) -> None:
    """A session whose TLS close is still waiting for the client is a session stop() ends,
    not a connection left to the event loop's close."""
    running = start(_connector("TlsStop"))
    lingering = _over_tls(running, pki, "127.0.0.27")
    assert lingering.command("QUIT")[0] == 221
    assert len(running.runtime.sessions) == 1
    began = time.monotonic()
    running.call(running.receiver.stop())
    lingering.sock.settimeout(engine.TLS_CLOSE_GRACE / 2)
    assert lingering.closed()
    assert time.monotonic() - began < engine.TLS_CLOSE_GRACE
    assert running.runtime.sessions == set()
    assert _open_sessions("TlsStop") == 0
