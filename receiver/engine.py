"""aiosmtpd's engine as every session uses it: its state set up without reflection, its
command loop without the costs our settings make idle, and one inactivity timer per session.

aiosmtpd's ``SMTP.__init__`` finds its method tables by reflection on every connection;
``set_up`` looks them up once per class. Its command loop (``SMTP._handle_client``) makes
two log calls with sanitised arguments per command, looks up per-command size limits that
``lines.CommandReader`` has already enforced more strictly, checks STARTTLS-required and call
limits that are never on here, and cancels and makes a timer per command. ``serve`` is that
loop for our settings: the same replies in the same order, the same end of the session
(``tests/receiver/test_engine.py`` holds the two to the same answers). ``InactivityTimer``
keeps one timer armed and moves it on only when it fires early. ``starttls`` is aiosmtpd's
STARTTLS with the TLS layer's close bounded by ``TLS_CLOSE_GRACE`` instead of asyncio's 30 s."""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import collections
import inspect
import logging
import types
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import (
    BOGUS_LIMIT,
    SMTP,
    TLSSetupException,
    _AuthMechAttr,
    login_always_fail,
    syntax,
)
from aiosmtpd.smtp import __ident__ as ENGINE_IDENT

from . import lines, policy

if TYPE_CHECKING:
    from .smtp import ConnectorSMTP

engine_log = logging.getLogger("mail.log")  # aiosmtpd's own logger, for its warnings
# How long a TLS session's close waits for the client's close_notify (or its end of the
# connection) after sending its own, before the connection is cut.
TLS_CLOSE_GRACE = 1.0


class EngineLimits(dict[str, int]):
    """aiosmtpd's per-command size limits, as ``serve`` checks them after ``CommandReader``:
    a line as long as the reader's default buffer (AUTH and X-EXPS: a GSSAPI or NTLM
    initial response), and EHLO's additions are dropped."""

    def __missing__(self, key: str) -> int:
        if key in ("AUTH", "X-EXPS"):  # a GSSAPI or NTLM initial response (RFC 4954 4)
            return policy.AUTH_LINE_LIMIT
        return SMTP.line_length_limit

    def __setitem__(self, key: str, value: int) -> None:
        pass


ENGINE_LIMITS = EngineLimits()


@dataclass(frozen=True)
class MethodTables:
    """The names behind aiosmtpd's per-connection method tables, found once per class."""

    smtp: frozenset[str]  # smtp_<COMMAND> methods
    hooks: frozenset[str]  # the handler's handle_<COMMAND> hooks
    auth: Mapping[str, tuple[str, bool]]  # mechanism: (attribute, built in)
    ehlo_hook_ver: str | None


def method_tables(engine: type, handler: type) -> MethodTables:
    auth = []
    for owner, builtin in ((engine, True), (handler, False)):
        for name, function in inspect.getmembers(owner):
            if name.startswith("auth_"):
                mechanism = getattr(
                    function,
                    "__auth_mechanism_name__",
                    name.replace("auth_", "").replace("__", "-"),
                )
                auth.append((mechanism, name, builtin))
    hooks = tuple(m.replace("handle_", "") for m in dir(handler) if m.startswith("handle_"))
    ehlo = getattr(handler, "handle_EHLO", None)
    if ehlo is None:
        version = None
    elif len(inspect.signature(ehlo).parameters) == 6:  # self + the five arguments
        version = "new"
    else:
        raise RuntimeError("the EHLO hook must take five arguments")
    return MethodTables(
        smtp=frozenset(commands(engine)),
        hooks=frozenset(hooks),
        auth=types.MappingProxyType(
            {mechanism: (name, builtin) for mechanism, name, builtin in auth}
        ),
        ehlo_hook_ver=version,
    )


_TABLES: dict[tuple[type, type], MethodTables] = {}


class Defaults:
    """The part of the state ``SMTP.__init__`` (and asyncio's ``StreamReaderProtocol``)
    gives every connection that is the same for all of ours, as class attributes: an
    instance reads them here until the session sets its own. ``set_up`` sets the rest."""

    __ident__ = ENGINE_IDENT
    data_size_limit: int | None = None  # until the connector is known
    enable_SMTPUTF8 = False
    _decode_data = False
    # ``CommandReader`` enforces the command line limits; the engine's stay out of its way.
    command_size_limits = ENGINE_LIMITS
    tls_context = None  # until the connector is known
    require_starttls = None
    _timeout_duration = 300
    _timeout_handle = None
    _tls_handshake_okay = True
    _tls_protocol = None
    _original_transport = None
    session = None
    envelope = None
    transport = None
    _handler_coroutine = None
    _auth_require_tls = False
    _proxy_timeout = None
    _authenticator = None
    _auth_required = False
    _enforce_call_limit = False
    # StreamReaderProtocol's
    _paused = False
    _connection_lost = False
    _reject_connection = False
    _stream_writer = None
    _task = None
    _transport = None
    _over_ssl = False


def set_up(smtp: SMTP, handler: Any, hostname: str) -> None:
    """What ``SMTP.__init__`` sets up for our settings (no size limit until the connector
    is known, 8BITMIME, no SMTPUTF8, AUTH offered by ``policy``, no TLS until the
    connector is known) beyond ``Defaults``, with the method tables looked up once per
    class, and what ``StreamReaderProtocol.__init__`` sets for a server's connection."""
    kinds = (type(smtp), type(handler))
    tables = _TABLES.get(kinds)
    if tables is None:
        tables = _TABLES[kinds] = method_tables(*kinds)
    smtp.loop = smtp._loop = loop = asyncio.get_running_loop()
    reader = lines.CommandReader(smtp.line_length_limit, loop)
    smtp._drain_waiters = collections.deque()
    smtp._stream_reader_wr = weakref.ref(reader)
    smtp._strong_reader = reader
    smtp._client_connected_cb = smtp._cb_client_connected
    smtp._closed = loop.create_future()
    smtp.event_handler = handler
    smtp.hostname = hostname
    smtp._auth_callback = login_always_fail
    smtp._auth_methods = AuthTable(smtp, handler, tables.auth)
    smtp._handle_hooks = BoundTable(handler, "handle_", tables.hooks)
    smtp._ehlo_hook_ver = tables.ehlo_hook_ver
    smtp._smtp_methods = BoundTable(smtp, "smtp_", tables.smtp)


class BoundTable(Mapping[str, Any]):
    """A method table of aiosmtpd's (``_smtp_methods``, ``_handle_hooks``) that binds a
    method when it is looked up, instead of binding every one on every connection."""

    __slots__ = ("owner", "prefix", "names")

    def __init__(self, owner: Any, prefix: str, names: frozenset[str]) -> None:
        self.owner, self.prefix, self.names = owner, prefix, names

    def __getitem__(self, name: str) -> Any:
        if name not in self.names:
            raise KeyError(name)
        return getattr(self.owner, self.prefix + name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self.owner, self.prefix + name) if name in self.names else default

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.names))

    def __len__(self) -> int:
        return len(self.names)


class AuthTable(Mapping[str, _AuthMechAttr]):
    """aiosmtpd's ``_auth_methods`` (mechanism to method and whether it is built in),
    bound on lookup."""

    __slots__ = ("smtp", "handler", "entries")

    def __init__(self, smtp: Any, handler: Any, auth: Mapping[str, tuple[str, bool]]) -> None:
        self.smtp, self.handler, self.entries = smtp, handler, auth

    def __getitem__(self, mechanism: str) -> _AuthMechAttr:
        name, builtin = self.entries[mechanism]
        return _AuthMechAttr(getattr(self.smtp if builtin else self.handler, name), builtin)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


async def serve(smtp: ConnectorSMTP) -> None:
    """The command loop after the banner, until the connection ends or QUIT: aiosmtpd's,
    for an engine set up by ``set_up`` (no SMTPUTF8, no STARTTLS requirement, no call
    limits). Commands are found in a table of the class's methods made once
    (``commands``), not bound on every lookup; the engine's own length limits are looked
    up only for a line longer than the shortest of them."""
    bogus_budget = BOGUS_LIMIT
    reader = smtp._reader
    table = commands(type(smtp))
    while smtp.transport is not None and not smtp.ended:
        try:
            line: bytes = (await reader.readuntil()).rstrip(b"\r\n")
            if not line:
                await smtp.push("500 Error: bad syntax")
                continue
            command_bytes, _, arg_bytes = line.partition(b" ")
            try:
                command = command_bytes.upper().decode("ascii")
            except UnicodeDecodeError:
                await smtp.push("500 Error: bad syntax")
                continue
            arg: str | None = None
            if arg_bytes:
                try:
                    arg = str(arg_bytes.strip(), encoding="ascii", errors="strict")
                except UnicodeDecodeError:
                    await smtp.push("500 Error: strict ASCII mode")
                    continue
            # Every command's limit is 512 or more: a shorter line is within all of them.
            if len(line) > smtp.command_size_limit:
                limit = (
                    smtp.command_size_limits[command]
                    if smtp.session.extended_smtp
                    else smtp.command_size_limit
                )
                if len(line) > limit:
                    await smtp.push("500 Command line too long")
                    continue
            if not smtp._tls_handshake_okay and command != "QUIT":
                await smtp.push("554 Command refused due to lack of security")
                continue
            method = table.get(command)
            if method is None:
                engine_log.warning("%r unrecognised: %s", smtp.session.peer, command)
                bogus_budget -= 1
                if bogus_budget < 1:
                    engine_log.warning("%r too many bogus commands", smtp.session.peer)
                    await smtp.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                    smtp.transport.close()
                    continue
                await smtp.push(f'500 Error: command "{command}" not recognized')
                continue
            smtp._timeout_handle = smtp._idle.reset(smtp._timeout_duration)
            await method(smtp, arg)
        except (asyncio.CancelledError, ConnectionResetError):
            smtp._writer.close()
            raise
        except Exception as error:
            await _failed(smtp, error)


_COMMANDS: dict[type, dict[str, Any]] = {}


def commands(engine: type) -> dict[str, Any]:
    """``engine``'s ``smtp_<COMMAND>`` methods by command, unbound: aiosmtpd's
    ``_smtp_methods``, made once per class."""
    table = _COMMANDS.get(engine)
    if table is None:
        table = _COMMANDS[engine] = {
            name[5:]: getattr(engine, name) for name in dir(engine) if name.startswith("smtp_")
        }
    return table


@syntax("QUIT")
async def quit(smtp: ConnectorSMTP, arg: str | None) -> None:
    """QUIT as aiosmtpd's ``smtp_QUIT`` answers it (no handler hook here); then the command
    loop ends (``ended``) and returns. aiosmtpd cancels the session's own task instead, and
    the cancellation unwinds every frame of it once more."""
    if arg:
        await smtp.push("501 Syntax: QUIT")
        return
    await smtp.push("221 Bye")
    if smtp.transport is not None:
        smtp.transport.close()
    smtp.ended = True


@syntax("STARTTLS", when="tls_context")
async def starttls(smtp: ConnectorSMTP, arg: str | None) -> None:
    """STARTTLS as aiosmtpd's ``smtp_STARTTLS``, but the TLS layer it makes waits at most
    ``TLS_CLOSE_GRACE`` for the client's close_notify once the session closes (after 221,
    421, a closing 5xx or a timeout): the reply and the server's close_notify are sent,
    and a client that keeps the connection open without answering is cut then, not after
    asyncio's 30 s, so its connection counts are free again."""
    if arg:
        await smtp.push("501 Syntax: STARTTLS")
        return
    if not smtp.tls_context:
        await smtp.push("454 TLS not available")
        return
    await smtp.push("220 Ready to start TLS")
    waiter = smtp.loop.create_future()
    smtp._tls_protocol = layer = sslproto.SSLProtocol(
        smtp.loop,
        smtp,
        smtp.tls_context,
        waiter,
        server_side=True,
        ssl_shutdown_timeout=TLS_CLOSE_GRACE,
    )
    # The plain transport is kept: connection_made tells the TLS layer's call by it, and
    # connection_lost closes it.
    smtp._original_transport = plain = smtp.transport
    assert plain is not None
    plain.set_protocol(layer)
    smtp.transport = layer._app_transport
    layer.connection_made(plain)
    try:
        await waiter  # the handshake
    except asyncio.CancelledError:
        raise
    except Exception as error:
        raise TLSSetupException() from error


async def _failed(smtp: ConnectorSMTP, error: Exception) -> None:
    """A command that raised: the handler's reply for it, as aiosmtpd sends it; a failed
    TLS handshake ends the connection instead."""
    status = None
    try:
        status = await smtp.handle_exception(error)
    except Exception as inner:
        engine_log.exception("%r Exception in handle_exception()", smtp.session.peer)
        status = f"500 Error: ({inner.__class__.__name__}) {inner}"
    finally:
        if isinstance(error, TLSSetupException):
            smtp.transport.close()
            smtp.connection_lost(error)
        else:
            await smtp.push(status)


class InactivityTimer:
    """A session's inactivity timeout and its connection deadline with one timer: activity
    only notes the time, and the timer, when it fires, ends the session (idle for the whole
    duration, or past the deadline) or is set again for what is left. aiosmtpd cancels its
    timer and makes a new one on every command and every block of DATA."""

    __slots__ = ("loop", "on_timeout", "handle", "due", "active", "duration", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_timeout: Any) -> None:
        self.loop, self.on_timeout = loop, on_timeout
        self.handle: asyncio.TimerHandle | None = None
        self.due = 0.0  # when the timer fires
        self.active = 0.0  # the last activity
        self.duration = 0.0
        self.deadline: tuple[float, Any] | None = None  # (when, what ends the session then)

    def reset(self, duration: float) -> asyncio.TimerHandle:
        """Activity now: idle from here, ``duration`` at most. The timer is made again
        only when it would fire later than that (a shorter duration than before)."""
        now = self.active = self.loop.time()
        self.duration = duration
        due = now + duration
        if self.deadline is not None and self.deadline[0] < due:
            due = self.deadline[0]
        if self.handle is None or self.handle.cancelled() or self.due > due:
            self._arm(due)
        assert self.handle is not None
        return self.handle

    def end_by(self, when: float, on_deadline: Any) -> None:
        """The session ends at ``when`` (loop time) whatever it does: ``on_deadline``. A
        timer not armed yet is armed by the next ``reset``, for whichever comes first."""
        self.deadline = (when, on_deadline)
        if self.handle is not None and not self.handle.cancelled() and self.due > when:
            self._arm(when)

    def _arm(self, due: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.due = due
        self.handle = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        now = self.loop.time()
        if self.deadline is not None and self.deadline[0] <= now:
            self.deadline[1]()
            return
        due = self.active + self.duration
        if due > now:  # there was activity since it was set
            if self.deadline is not None and self.deadline[0] < due:
                due = self.deadline[0]
            self._arm(due)
            return
        self.on_timeout()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def release(self) -> None:
        """Cancelled for good: what it would have called is forgotten (it is the session's
        own method, and so a reference back to the session)."""
        self.cancel()
        self.on_timeout = self.deadline = None
