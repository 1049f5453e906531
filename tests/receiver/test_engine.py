"""``ConnectorSMTP`` sets aiosmtpd's engine up without ``SMTP.__init__`` (whose reflection
costs more than the rest of a session's setup), and reads everyday MAIL/RCPT paths without
the full RFC 5322 parser. Both must stay equal to what aiosmtpd itself would do: these tests
compare against stock aiosmtpd, so an aiosmtpd upgrade that changes either fails here."""

from __future__ import annotations

import asyncio
import csv
import gc
import inspect
import itertools
import pathlib
import time
import types
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from smtpgate.connectors import bindings
from smtpgate.connectors.config import ServerConfig
from smtpgate.connectors.ranges import parse_address as addresses_of
from smtpgate.receiver import addresses, delivery, engine, identity, lines, policy, sasl, server
from smtpgate.receiver.hooks import Handler
from smtpgate.receiver.intake import Intake
from smtpgate.receiver.protocol_log import ProtocolLog
from smtpgate.receiver.smtp import ConnectorSMTP

from .conftest import FQDN
from .helpers import LOOP, Raw, internet_config_file, transcript

# Set by ConnectorSMTP itself, not by the engine.
OWN = {
    "runtime",
    "binding",
    "config",
    "delivery",
    "policy",
    "refusal",
    "_greeted",
    "_close_after",
    "_counted",
    "_proxy_peer",
    "_open_metric",
    "intake",
    "_arg",
    "plog",
    "_idle",
    "ended",
}


def _pair(tmp_path: pathlib.Path) -> tuple[ConnectorSMTP, ConnectorSMTP]:
    config = ServerConfig.from_json(internet_config_file(tmp_path).read_text())
    runtime = server.Runtime(config, delivery.MaildirDelivery(tmp_path / "spool"))
    binding = bindings.parse("0.0.0.0:25")
    ours = ConnectorSMTP(runtime, binding)
    stock = ConnectorSMTP.__new__(ConnectorSMTP)
    for name in OWN:
        setattr(stock, name, getattr(ours, name))
    SMTP.__init__(
        stock,
        Handler(stock),
        data_size_limit=None,
        enable_SMTPUTF8=False,
        decode_data=False,
        hostname=config.fqdn,
        auth_require_tls=False,
        timeout=300,
    )
    return ours, stock


def test_the_engine_is_set_up_as_aiosmtpd_would(tmp_path: pathlib.Path) -> None:
    async def compare() -> None:
        ours, stock = _pair(tmp_path)
        # What aiosmtpd sets on each connection, ours has, on the connection or as a class
        # default (engine.Defaults); nothing more. Command line limits are CommandReader's;
        # the engine's are held above them.
        assert set(vars(ours)) - OWN < set(vars(stock))
        assert all(hasattr(ConnectorSMTP, name) for name in set(vars(stock)) - set(vars(ours)))
        for name in sorted(set(vars(stock)) - OWN | {"command_size_limits"}):
            mine, theirs = getattr(ours, name), getattr(stock, name)
            if name == "_auth_methods":
                assert {k: v.is_builtin for k, v in mine.items()} == {
                    k: v.is_builtin for k, v in theirs.items()
                }
                assert {k: v.method.__name__ for k, v in mine.items()} == {
                    k: v.method.__name__ for k, v in theirs.items()
                }
            elif name in ("_handle_hooks", "_smtp_methods"):
                assert set(mine) == set(theirs), name
                assert all(mine[k].__func__ is theirs[k].__func__ for k in mine), name
                assert all(m.__self__ in (ours, ours.event_handler) for m in mine.values())
            elif isinstance(theirs, asyncio.StreamReader):
                # The receiver's reader is a StreamReader that reads command lines its way.
                assert type(mine) is lines.CommandReader and mine._limit == theirs._limit, name
            elif name in ("_stream_reader_wr", "event_handler"):
                assert type(mine) is type(theirs), name
            elif name == "command_size_limits":
                # Ours, not aiosmtpd's class-wide table (which its EHLO raises in place).
                assert dict(mine) == {} and mine is engine.ENGINE_LIMITS
                assert mine is not SMTP.command_size_limits
                assert mine["MAIL"] == SMTP.line_length_limit
            elif name == "_closed":
                assert type(mine) is type(theirs)
            elif inspect.ismethod(theirs):
                assert mine.__func__ is theirs.__func__ and mine.__self__ is ours, name
            else:
                assert mine == theirs, name
        assert ours.event_handler.smtp is ours
        assert ours._smtp_methods["DATA"].__func__ is ConnectorSMTP.smtp_DATA

    asyncio.run(compare())


def _unconnected(tmp_path: pathlib.Path, count: int) -> list[ConnectorSMTP]:
    """``count`` sessions of one runtime (the Internet connector), not yet connected."""
    config = ServerConfig.from_json(internet_config_file(tmp_path).read_text())
    runtime = server.Runtime(config, delivery.MaildirDelivery(tmp_path / "spool"))
    binding = bindings.parse("0.0.0.0:25")
    return [ConnectorSMTP(runtime, binding) for _ in range(count)]


class _Transport(asyncio.Transport):
    """A connection's transport for a look at the state it starts with (nothing is sent;
    what the session writes is kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("192.0.2.7", 40000), "sockname": ("127.0.0.1", 25)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))


def test_a_new_connection_starts_as_aiosmtpd_starts_it(tmp_path: pathlib.Path) -> None:
    """``ConnectorSMTP._open`` does for a new connection what aiosmtpd's connection_made
    and asyncio's StreamReaderProtocol's do: the same state, the same objects."""

    async def compare() -> None:
        ours, stock = _unconnected(tmp_path, 2)
        mine, theirs = _Transport(), _Transport()
        ours.connection_made(mine)
        stock._attach(("127.0.0.1", 25), addresses_of("192.0.2.7"), "192.0.2.7:40000")
        SMTP.connection_made(stock, theirs)
        try:
            assert set(vars(ours)) <= set(vars(stock))
            for name in sorted(set(vars(stock))):
                a, b = getattr(ours, name), getattr(stock, name)
                if name in ("transport", "_transport"):
                    assert a is mine and b is theirs, name
                elif name in ("_reader", "_writer", "_stream_writer"):
                    assert type(a) is type(b) and a._transport is mine, name
                elif name in ("envelope", "session"):
                    assert vars(a) == vars(b), name
                elif name in ("_handler_coroutine", "_timeout_handle", "plog", "_closed"):
                    assert type(a) is type(b), name
                elif name == "_idle":
                    assert (a.duration, a.deadline is None) == (b.duration, b.deadline is None)
                elif name in ("_stream_reader_wr", "_auth_methods") or name.endswith("_table"):
                    assert type(a) is type(b), name
                elif inspect.ismethod(b):
                    assert a.__func__ is b.__func__ and a.__self__ is ours, name
                elif name in ("_handle_hooks", "_smtp_methods"):
                    assert set(a) == set(b), name
                elif name == "event_handler":
                    assert type(a) is type(b) and a.smtp is ours, name
                else:
                    assert a == b, name
            assert ours._reader is ours._stream_reader  # the reader the protocol feeds
            assert ours._writer._reader is ours._reader
        finally:
            for smtp in (ours, stock):
                smtp._handler_coroutine.cancel()
                smtp.transport.close()
            await asyncio.sleep(0)

    asyncio.run(compare())


@pytest.mark.parametrize("error", [None, ConnectionResetError("reset by peer")])
def test_a_lost_connection_ends_as_aiosmtpd_ends_it(
    tmp_path: pathlib.Path, error: Exception | None
) -> None:
    """``ConnectorSMTP.connection_lost`` leaves the engine and its streams as aiosmtpd's
    connection_lost and asyncio's StreamReaderProtocol's do (besides its own counts)."""

    async def compare() -> None:
        ours, stock = _unconnected(tmp_path, 2)
        mine, theirs = _Transport(), _Transport()
        ours.connection_made(mine)
        stock.connection_made(theirs)
        readers = ours._reader, stock._reader
        mine.close()  # as a transport is by the time it reports the connection lost
        theirs.close()
        ours.connection_lost(error)
        SMTP.connection_lost(stock, error)
        for name in ("_connection_lost", "_stream_reader_wr", "_stream_writer", "_task"):
            assert getattr(ours, name) == getattr(stock, name), name
        assert ours.transport is None and stock.transport is None
        assert ours._transport is None and stock._transport is None
        assert ours._closed.done() and stock._closed.done()
        if error is None:
            assert ours._closed.result() is None and stock._closed.result() is None
        else:
            assert ours._closed.exception() is error and stock._closed.exception() is error
        assert [(r._eof, r.exception()) for r in readers] == [
            (error is None, error),
            (error is None, error),
        ]
        for smtp in (ours, stock):
            assert smtp._handler_coroutine.cancelling()
        await asyncio.sleep(0)
        assert ours._handler_coroutine.cancelled() and stock._handler_coroutine.cancelled()

    asyncio.run(compare())


def test_each_client_gets_a_session_of_its_own_from_the_connectors_fresh_one(
    tmp_path: pathlib.Path,
) -> None:
    """``Runtime.fresh_session`` is made once per connector and config; each client's
    policy session is a copy, with its own address, and what one session learns (HELO,
    TLS, a user, its principals, its counts) stays its own."""
    config = ServerConfig.from_json(internet_config_file(tmp_path).read_text())
    runtime = server.Runtime(config, delivery.MaildirDelivery(tmp_path / "spool"))
    connector = config.connectors[0]
    fresh = runtime.fresh_session(config, connector)
    assert runtime.fresh_session(config, connector) is fresh
    one = fresh.for_client(addresses_of("192.0.2.1"), None)
    two = fresh.for_client(addresses_of("192.0.2.2"), "10.0.0.9")
    made = policy.Session(
        connector=connector,
        remote=addresses_of("192.0.2.1"),
        accepted_domains=config.accepted_domains,
        principals=identity.anonymous(connector),
        **sasl.session_offers(config, connector),
    )
    assert one == made  # what policy.Session(...) would have made for the client
    assert (str(two.remote), two.via) == ("192.0.2.2", "10.0.0.9")
    one.helo, one.tls, one.user, one.junk_commands = "a.example", True, "alice", 3
    one.principals = identity.authenticated_user("alice")
    assert (two.helo, two.tls, two.user, two.junk_commands) == (None, False, None, 0)
    assert two.principals == fresh.principals == identity.anonymous(connector)
    assert (fresh.helo, fresh.user, str(fresh.remote)) == (None, None, "0.0.0.0")
    # Copies share what the fresh session holds: only values nobody changes in place (the
    # connector and the accepted domains are the config's own, as every session's were).
    assert fresh.rights  # worked out once, and shared too
    for name, value in vars(fresh).items():
        if name not in ("connector", "accepted_domains"):
            hash(value)
    other = config.model_copy(update={"fqdn": "other.contoso.com"})
    assert runtime.fresh_session(other, other.connectors[0]) is not fresh


def test_a_success_waits_while_the_client_does_not_read(tmp_path: pathlib.Path) -> None:
    """``push`` writes a success at once on a session without a protocol log; while the
    transport has paused writing (a client that does not read its replies), it waits
    until writing resumes, as aiosmtpd's push with its drain does."""

    async def check() -> None:
        (smtp,) = _unconnected(tmp_path, 1)
        transport = _Transport()
        smtp.connection_made(transport)
        for _ in range(5):  # the pregreet turn, the banner, the wait for a command
            await asyncio.sleep(0)
        assert smtp._plain and transport.written[0].startswith(b"220 ")
        await smtp.push("250 2.0.0 one")
        assert transport.written[-1] == b"250 2.0.0 one\r\n"
        smtp.pause_writing()
        pushing = asyncio.ensure_future(smtp.push("250 2.0.0 two"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert transport.written[-1] == b"250 2.0.0 two\r\n" and not pushing.done()
        smtp.resume_writing()
        await asyncio.wait_for(pushing, 5)
        transport.closing = True  # a transport closing: the push waits a turn, then ends
        await asyncio.wait_for(smtp.push("250 2.0.0 three"), 5)
        smtp._handler_coroutine.cancel()
        await asyncio.sleep(0)

    asyncio.run(check())


def test_ehlo_never_raises_the_engines_command_size_limits(tmp_path: pathlib.Path) -> None:
    async def compare() -> None:
        one, _ = _pair(tmp_path)
        two, _ = _pair(tmp_path)
        one.command_size_limits["MAIL"] += 26  # what EHLO does when SIZE is offered
        assert one.command_size_limits["MAIL"] == SMTP.line_length_limit
        assert two.command_size_limits["MAIL"] == SMTP.line_length_limit

    asyncio.run(compare())


LOCALS = [
    "a",
    "user.name",
    "user+tag",
    "a..b",
    ".a",
    '"x y"',
    "a b",
    "a\\b",
    "Ab-9_!#$%&'*/=?^`{|}~",
]
DOMAINS = ["b.c", "EX-1.com", "b..c", "-b.c", "[1.2.3.4]", "", "c"]
SHAPES = ["<{}>", " <{}>", "<{}> SIZE=10", "<{}>\tBODY=8BITMIME SIZE=9 ", "<{}>  ", "<{}>x"]
SHAPES += ["<{}> (c) X=1", "{}", "{} SIZE=1", "<{}", "< {} >", "<@r.e:{}>", "<{}> <x@y>"]


@pytest.mark.parametrize(
    "arg",
    [
        shape.format(f"{local}@{domain}")
        for shape, local, domain in itertools.product(SHAPES, LOCALS, DOMAINS)
    ]
    + ["", "<>", "<> SIZE=5", "<a>", "<@b.c>", "<a@>", "<a(c)@b.c>"],
)
def test_everyday_paths_read_as_aiosmtpd_reads_them(arg: str) -> None:
    try:
        stock = SMTP._getaddr(types.SimpleNamespace(local_part_limit=0), arg)  # type: ignore[arg-type]
    except IndexError:  # aiosmtpd's parser fails on some malformed paths, e.g. "a@"
        stock = (None, None)
    fast = addresses.simple_path(arg)
    if fast is not None:
        assert fast == stock
    engine = ConnectorSMTP.__new__(ConnectorSMTP)  # _getaddr reads only class settings
    assert engine._getaddr(arg) == stock


def test_the_everyday_path_is_taken_for_everyday_addresses() -> None:
    assert addresses.simple_path("<user@contoso.com> SIZE=1024") == (
        "user@contoso.com",
        "SIZE=1024",
    )
    assert addresses.simple_path("<a.b+c@mail.example.org>") == ("a.b+c@mail.example.org", "")
    assert addresses.simple_path("<>") is None
    assert addresses.simple_path('<"quoted"@contoso.com>') is None


# Sessions of odd and everyday command lines: every reply of ``engine.serve`` must be the
# one aiosmtpd's own command loop gives, and the session must end at the same point.
SCRIPTS = [
    [b"EHLO client.example", b"", b"NOOP", b"QUIT"],
    [b"\xc3\xa9HLO client.example", b"EHLO \xc3\xa9.example", b"HELO x", b"QUIT"],
    [b"ehlo client.example", b"mail from:<a@example.org>   ", b"rcpt to:<b@contoso.com>"],
    [b"MAIL", b"MAIL ", b"EHLO", b"HELO", b"HELO client.example", b"MAIL FROM:<a@b.c> X=Y"],
    [b"EHLO c", b"HELP", b"HELP MAIL", b"HELP NOSUCH", b"VRFY", b"VRFY x", b"NOOP x", b"RSET"],
    [b"EHLO c", b"DATA", b"RCPT TO:<b@contoso.com>", b"MAIL FROM:<>", b"DATA x", b"QUIT x"],
    [b"EHLO c", b"BOGUS", b"X", b"Y Z", b"W", b"V", b"NOOP"],  # aiosmtpd's bogus budget
    [b"EHLO c", b"AUTH", b"AUTH NOSUCH", b"STARTTLS x", b"NOOP", b"QUIT"],
    [b"EHLO c", b"\tNOOP", b" NOOP", b"NOOP  ", b"RSET\t", b"QUIT"],
]


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(i) for i in range(len(SCRIPTS))])
def test_the_command_loop_answers_as_aiosmtpds_own(
    start: Any, monkeypatch: pytest.MonkeyPatch, script: list[bytes]
) -> None:
    connectors = [("Loop", LOOP)]
    ours = transcript(start(connectors).port(25), script)

    async def stock(self: ConnectorSMTP) -> None:
        await SMTP._handle_client(self)  # aiosmtpd's loop, banner included

    monkeypatch.setattr(ConnectorSMTP, "_commands", stock)
    monkeypatch.setattr(ConnectorSMTP, "smtp_QUIT", SMTP.smtp_QUIT)  # aiosmtpd's own QUIT
    monkeypatch.setattr(engine, "_COMMANDS", {})
    theirs = transcript(start(connectors).port(25), script)
    assert ours == theirs
    assert len(ours) > 2


# -- the session's one inactivity timer (engine.InactivityTimer) ----------------------------

IDLE = {
    "usage": "Custom",
    "bindings": ["0.0.0.0:25"],
    "remoteIPRanges": ["127.0.0.0/8"],
    "permissionGroups": ["AnonymousUsers"],
    "tarpitIntervalSeconds": 0,
    "connectionInactivityTimeoutSeconds": 1,
    "connectionTimeoutSeconds": 60,
}


def _closed_within(raw: Raw, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (TLS or not)."""
    raw.sock.settimeout(seconds)
    try:
        while raw.sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:  # reset, or the TLS layer's end without close_notify
        return True


def _sessions(running: Any) -> list[ConnectorSMTP]:
    async def now() -> list[ConnectorSMTP]:
        return list(running.runtime.sessions)

    return list(running.call(now()))


def test_commands_keep_a_session_from_going_idle_and_silence_ends_it(start: Any) -> None:
    # The timer set at the first command fires after 1 s and must find the later ones.
    raw = Raw(start([("Idle", IDLE)]).port(25))
    assert raw.reply()[0] == 220
    began = time.monotonic()
    while time.monotonic() - began < 3:
        assert raw.command("NOOP")[0] == 250
        time.sleep(0.3)
    began = time.monotonic()
    assert _closed_within(raw, 5)
    assert 0.6 < time.monotonic() - began < 2.5


def test_silence_after_starttls_ends_the_session(start: Any, pki: Any) -> None:
    raw = Raw(start([("Idle", IDLE)]).port(25))
    raw.reply()
    raw.command("EHLO client.example")
    assert raw.command("STARTTLS")[0] == 220
    raw.starttls(str(pki.ca_file), FQDN)
    began = time.monotonic()
    while time.monotonic() - began < 2:  # commands over TLS keep it open
        assert raw.command("EHLO client.example")[0] == 250
        time.sleep(0.3)
    began = time.monotonic()
    assert _closed_within(raw, 5)
    assert time.monotonic() - began < 2.5


def test_after_a_proxy_header_the_connectors_inactivity_timeout_applies(start: Any) -> None:
    # Before the header the engine's default (300 s) runs; the connector's 1 s follows it.
    running = start([("Idle", IDLE)], exposure={"trustedProxyRanges": ["127.0.0.1/32"]})
    raw = Raw(running.port(25))
    raw.send(b"PROXY TCP4 127.0.0.9 127.0.0.1 41234 25\r\n")
    assert raw.reply()[0] == 220
    began = time.monotonic()
    assert _closed_within(raw, 5)
    assert time.monotonic() - began < 2.5


# (After STARTTLS, the TLS layer waits up to 30 s for the client's close_notify before the
# connection is lost: not one of the ends held here.)
@pytest.mark.parametrize("end", ["QUIT", "drop", "failed handshake"])
def test_no_timer_of_a_session_is_left_once_it_ends(start: Any, end: str) -> None:
    # A timer left armed would fire into a session without a transport (aiosmtpd's
    # _timeout_cb asserts one) and keep the session alive until then.
    running = start([("Idle", IDLE)])
    failures: list[dict[str, Any]] = []
    running.loop.call_soon_threadsafe(
        running.loop.set_exception_handler, lambda loop, context: failures.append(context)
    )
    raw = Raw(running.port(25))
    raw.reply()
    raw.command("EHLO client.example")
    (session,) = _sessions(running)
    for _ in range(5):  # past the timeout: the timer has set itself again
        time.sleep(0.3)
        assert raw.command("NOOP")[0] == 250
    # End once it has done so after the last command: the engine's _timeout_handle (which
    # aiosmtpd's connection_lost cancels) is then not the armed one.
    deadline = time.monotonic() + 0.9
    while session._idle.handle is session._timeout_handle and time.monotonic() < deadline:
        time.sleep(0.01)
    if end == "failed handshake":
        assert raw.command("STARTTLS")[0] == 220
        raw.send(b"not a TLS handshake\r\n" * 20)
    if end == "drop":
        raw.close()
    else:
        if end != "failed handshake":
            assert raw.command("QUIT")[0] == 221
        assert _closed_within(raw, 5)
    deadline = time.monotonic() + 5
    while _sessions(running) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sessions(running) == []
    assert session.transport is None
    handle = session._idle.handle
    assert handle is not None and handle.cancelled()

    async def lost_again() -> None:  # a released session has been told already
        session.connection_lost(None)

    running.call(lost_again())
    time.sleep(1.5)  # past the inactivity timeout
    assert [(c.get("message"), repr(c.get("exception"))) for c in failures] == []


# -- QUIT ------------------------------------------------------------------------------------


def test_commands_pipelined_behind_quit_are_neither_read_nor_answered(
    start: Any, tmp_path: pathlib.Path
) -> None:
    log_file = tmp_path / "RECV.LOG"
    plog = ProtocolLog(str(log_file))
    running = start([("Loop", {**IDLE, "protocolLoggingLevel": "Verbose"})], protocol_log=plog)
    raw = Raw(running.port(25))
    assert raw.reply()[0] == 220
    raw.send(b"EHLO client.example\r\n")
    assert raw.reply()[0] == 250
    raw.send(b"QUIT\r\nNOOP\r\nRSET\r\nMAIL FROM:<a@example.org>\r\n")
    assert raw.reply() == (221, "Bye")
    raw.sock.settimeout(5)
    rest = b""
    while chunk := raw.sock.recv(65536):
        rest += chunk
    assert raw.buffer + rest == b""
    running.stop()
    plog.close()
    rows = list(csv.reader(log_file.read_text().splitlines()[5:]))
    assert [row[7] for row in rows if row[6] == "<"] == ["EHLO client.example", "QUIT"]


# -- a finished session is freed at once -----------------------------------------------------


def _sent_message(raw: Raw) -> None:
    assert raw.command("MAIL FROM:<a@example.org>")[0] == 250
    assert raw.command("RCPT TO:<b@contoso.com>")[0] == 250
    assert raw.command("DATA")[0] == 354
    raw.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
    assert raw.reply()[0] == 250


@pytest.mark.parametrize("end", ["QUIT", "QUIT after STARTTLS", "drop in DATA", "drop at once"])
def test_a_finished_session_leaves_nothing_for_the_collector(
    start: Any, pki: Any, end: str
) -> None:
    # Its objects are freed by their reference counts as it ends: none is part of a cycle
    # that only the collector's next pass would find.
    running = start([("Idle", {**IDLE, "connectionInactivityTimeoutSeconds": 30})])
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            raw = Raw(running.port(25))
            assert raw.reply()[0] == 220
            if end != "drop at once":
                assert raw.command("EHLO client.example")[0] == 250
            if end == "QUIT after STARTTLS":
                assert raw.command("STARTTLS")[0] == 220
                raw.starttls(str(pki.ca_file), FQDN)
                assert raw.command("EHLO client.example")[0] == 250
            if end.startswith("QUIT"):
                _sent_message(raw)
                assert raw.command("QUIT")[0] == 221
                assert _closed_within(raw, 5)
            elif end == "drop in DATA":
                assert raw.command("MAIL FROM:<a@example.org>")[0] == 250
                assert raw.command("RCPT TO:<b@contoso.com>")[0] == 250
                assert raw.command("DATA")[0] == 354
                raw.send(b"Subject: s\r\n\r\npart of a body\r\n")
            raw.close()
        deadline = time.monotonic() + 5
        while _sessions(running) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sessions(running) == []
        # Until the last connection_lost has run: then the sessions are gone, or (had
        # they cycles) are left for the collector below.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(
            isinstance(o, ConnectorSMTP) for o in gc.get_objects()
        ):
            time.sleep(0.05)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, (ConnectorSMTP, Intake))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_after_starttls_the_engine_holds_commands_to_512_octets_until_ehlo(
    start: Any, pki: Any
) -> None:
    # STARTTLS forgets EHLO (RFC 3207), so its extensions' longer MAIL and RCPT lines no
    # longer apply: aiosmtpd's limit for a session without EHLO is 512 octets.
    raw = Raw(start([("Idle", IDLE)]).port(25))
    raw.reply()
    raw.command("EHLO client.example")
    assert raw.command("STARTTLS")[0] == 220
    raw.starttls(str(pki.ca_file), FQDN)
    long_mail = "MAIL FROM:<" + "a" * 560 + "@example.org>"
    assert raw.command(long_mail) == (500, "Command line too long")
    assert raw.command("EHLO client.example")[0] == 250
    assert raw.command(long_mail)[0] == 250
