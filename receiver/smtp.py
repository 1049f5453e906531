"""The aiosmtpd adapter: speaks SMTP, asks ``policy`` at every step, and does what it says.

One ``ConnectorSMTP`` per connection. It picks the connector when the connection is made
(most specific remote range on the binding it arrived at), then answers every command
from that connector's settings: the engine's command loop is ``engine.serve``, its hooks
are ``hooks.Handler``'s."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import (
    SMTP,
    Envelope,
    TLSSetupException,
    syntax,
)
from aiosmtpd.smtp import Session as EngineSession
from smtpgate.connectors.bindings import Binding
from smtpgate.connectors.enums import ProtocolLoggingLevel, ProxyProtocol
from smtpgate.connectors.ranges import IPAddress, parse_address

from . import (
    addresses,
    commands,
    delivery,
    engine,
    health,
    hooks,
    intake,
    lines,
    policy,
    protocol_log,
    proxy,
    replies,
    sasl,
)
from .replies import Reply

if TYPE_CHECKING:
    from .server import Runtime

log = logging.getLogger(__name__)
EXCH50_MAX = 1 << 20


class ConnectorSMTP(engine.Defaults, SMTP):
    """One SMTP connection on one binding."""

    _plain = False  # see _commands
    # What a connection starts with, until it has its own (class defaults, as engine.Defaults)
    policy: policy.Session | None = None
    refusal: Reply | None = None
    _greeted = False
    _close_after: Reply | None = None
    _counted: tuple[str, str] | None = None
    _proxy_peer: tuple[Any, Any] | None = None  # (peer, local) of a trusted proxy
    _open_metric: str | None = None
    intake: intake.Intake | None = None
    _arg: str | None = None  # the last MAIL or RCPT argument
    ended = False  # after QUIT: the command loop reads no more
    plog = protocol_log.SessionLog(None, "-", "-", "-", "-")  # logs nothing (no connector yet)

    def __init__(self, runtime: Runtime, binding: Binding) -> None:
        self.runtime = runtime
        self.binding = binding
        self.config = runtime.config  # the config in force when the connection arrived
        self.delivery = runtime.delivery  # and the delivery: both kept for the session
        engine.set_up(self, hooks.Handler(self), runtime.config.fqdn)
        self._idle = engine.InactivityTimer(self.loop, self._timeout_cb)

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None:  # the TLS layer after STARTTLS
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if peer is None or local is None:
            # Reset before it was taken (a TCP health check): nobody to serve.
            super().connection_made(transport)
            transport.abort()  # type: ignore[attr-defined]
            return
        remote = parse_address(peer[0])
        if self.config.proxy_protocol != ProxyProtocol.Off and self.config.trusted_proxy(remote):
            # A trusted proxy: the connector is chosen by the client its header names.
            self._proxy_peer = (peer, local)
        else:
            self._attach(local, remote, f"{peer[0]}:{peer[1]}")
        self._open(transport, peer)

    def _open(self, transport: asyncio.BaseTransport, peer: Any) -> None:
        """What aiosmtpd's ``connection_made`` and asyncio's ``StreamReaderProtocol``'s do
        for a new connection, without what is idle here (the peer's address asked again, a
        check for an SSL transport, a log call at a level ``mail.log`` never has): a new
        envelope and engine session, the idle timer, the reader and the writer on the
        transport, and the session's task. (A STARTTLS layer's ``connection_made`` is
        aiosmtpd's own.)"""
        self.envelope = Envelope()
        self.session = session = EngineSession(self.loop)
        session.peer = peer
        self._reset_timeout()
        self._transport = self.transport = transport  # type: ignore[assignment]
        reader = self._strong_reader
        reader._transport = transport
        self._reader = reader
        self._writer = self._stream_writer = asyncio.StreamWriter(
            transport,  # type: ignore[arg-type]
            self,
            reader,
            self.loop,
        )
        self._strong_reader = None
        self._handler_coroutine = self.loop.create_task(self._handle_client())

    def _attach(
        self,
        local: tuple[Any, ...],
        remote: IPAddress,
        endpoint: str,
        note: str = "",
        via: str | None = None,
    ) -> None:
        """Choose the connector for a client at ``remote`` (``endpoint`` as logged) and set
        the session up: counts, limits, protocol log, policy state, deadline. ``via``: the
        proxy the client came through; ``note``: a protocol log line on how it came."""
        local_ip = self.binding.ip if not self.binding.all_addresses else parse_address(local[0])
        connector = self.config.connector_for(local_ip, self.binding.port, remote)
        on_connector, from_source = 0, 0
        if connector is not None:
            self._counted = (connector.name, str(remote))
            on_connector, from_source = self.runtime.counters.open(*self._counted)
        self.refusal = policy.connection(connector, on_connector, from_source)
        verbose = (
            connector is not None
            and connector.protocol_logging_level is ProtocolLoggingLevel.Verbose
        )
        self.plog = protocol_log.SessionLog(
            self.runtime.protocol_log if verbose else None,
            connector.name if connector else "-",
            delivery.new_queue_id(),
            f"{local[0]}:{local[1]}",
            endpoint,
        )
        if self.plog.log is not None:  # each command line read goes in the protocol log
            self._stream_reader.on_command = self._received  # type: ignore[union-attr]
        self.plog("+")
        if note:
            self.plog("*", "", note)
        if self.refusal is not None:
            health.labelled(
                health.REFUSED_CONNECTIONS, self.refusal.status or str(self.refusal.code)
            ).inc()
        elif connector is not None:
            health.labelled(health.SESSIONS, connector.name).inc()
            health.labelled(health.SESSIONS_OPEN, connector.name).inc()
            self._open_metric = connector.name
        if connector is not None:
            self.policy = self.runtime.fresh_session(self.config, connector).for_client(remote, via)
            self.hostname = connector.fqdn
            self.tls_context = self.runtime.tls_context(connector)
            self._timeout_duration = connector.limits.connection_inactivity_timeout_seconds
            self.data_size_limit = policy.message_size_limit(self.policy)
            self._dsn = connector.extensions.dsn
            self._idle.end_by(
                self.loop.time() + connector.limits.connection_timeout_seconds,
                self._connection_deadline,
            )

    async def _proxy_header(self) -> bool:
        """Read the trusted proxy's header and choose the connector by the client it names;
        False when the connection is closed instead (no banner)."""
        assert self._proxy_peer is not None
        (peer, local), runtime = self._proxy_peer, self.runtime
        proxy_endpoint = f"{peer[0]}:{peer[1]}"
        reader = self._reader
        try:
            header = await proxy.read(
                reader,
                required=self.config.proxy_protocol == ProxyProtocol.Required,
                timeout=runtime.proxy_timeout,
                optional_wait=runtime.proxy_optional_wait,
            )
        except proxy.Refused as refused:
            self._refuse_proxy(refused.reason, proxy_endpoint, str(refused))
            return False
        finally:
            self._proxy_peer = None
        if header is None and reader.at_eof():
            # Connected and left without a word (a TCP health check): nothing to refuse.
            if self.transport is not None:
                self.transport.close()
            return False
        via = None
        if header is None or header.source is None:
            remote, endpoint = parse_address(peer[0]), proxy_endpoint
            note = "no PROXY header" if header is None else f"PROXY v{header.version} "
            if header is not None:
                note += f"{header.command} {header.family}: the proxy's own connection"
            note = f"{note} from trusted proxy {proxy_endpoint}"
        else:
            remote, port = header.source
            endpoint = f"{remote}:{port}" if remote.version == 4 else f"[{remote}]:{port}"
            destination = header.destination
            assert destination is not None
            note = (
                f"PROXY v{header.version} {header.family} via {proxy_endpoint} "
                f"(client dialled {destination[0]}:{destination[1]})"
            )
            via = str(parse_address(peer[0]))
        if self.transport is None or self.transport.is_closing():
            return False
        self._attach(local, remote, endpoint, note, via)
        self._reset_timeout()  # the connector's inactivity timeout from here on
        return True

    def _refuse_proxy(self, reason: proxy.Reason, endpoint: str, detail: str) -> None:
        """Close without a banner, counted and in one log line."""
        health.labelled(health.PROXY_REJECTED, reason.value).inc()
        log.warning("PROXY protocol: closed %s without a banner (%s): %s", endpoint, reason, detail)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self.event_handler is None:  # released (_release): it was told already
            return
        if self.transport is not None or self._original_transport is not None:
            self.plog("-", "", "Remote" if error is None else str(error))
        if self._open_metric is not None:
            health.labelled(health.SESSIONS_OPEN, self._open_metric).dec()
            self._open_metric = None
        self._idle.cancel()
        if self._counted is not None:
            self.runtime.counters.close(*self._counted)
            self._counted = None
        self.runtime.sessions.discard(self)
        # aiosmtpd's connection_lost and asyncio's StreamReaderProtocol's, without a log
        # call at a level mail.log never has and the timer cancelled once more:
        if self._original_transport is not None:  # after STARTTLS: the plain one too
            self._original_transport.close()
        reader = self._reader
        if reader is not None:
            if error is None:
                reader.feed_eof()
            else:
                reader.set_exception(error)
        if not self._closed.done():
            if error is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(error)
        asyncio.streams.FlowControlMixin.connection_lost(self, error)  # wakes a paused drain
        self._stream_reader_wr = self._stream_writer = self._task = self._transport = None
        task = self._handler_coroutine
        assert task is not None  # made in connection_made (aiosmtpd asserts it too)
        task.cancel()
        self.transport = None
        if task.done():
            self._release()

    def _release(self) -> None:
        """The session is over, its connection gone and its task ended: the references
        that make its objects one cycle (the handler, the engine's tables, the streams and
        the timer all point back at this object) are dropped, so that they are freed at
        once rather than left, some fifty objects a session, for the collector."""
        self.event_handler = None
        self._handle_hooks = self._smtp_methods = self._auth_methods = None  # type: ignore[assignment]
        self._reader = self._writer = self._stream_writer = None  # type: ignore[assignment]
        self._original_transport = self._tls_protocol = None
        self._client_connected_cb = self._handler_coroutine = None
        self._idle.release()

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)  # asyncio's, without finding the reader by weak reference

    def eof_received(self) -> bool | None:
        if self._proxy_peer is not None:
            # Waiting for a PROXY header: the reader sees the end (aiosmtpd would cancel
            # the session's task, leaving nobody to count a cut-short header and close).
            return asyncio.StreamReaderProtocol.eof_received(self)
        return super().eof_received()

    def _connection_deadline(self) -> None:
        if self.transport is not None:
            self.transport.write((replies.CONNECTION_TIMEOUT.line() + "\r\n").encode())
            self.transport.close()

    def _received(self, line: bytes) -> None:
        """A command line read, in the protocol log (Verbose)."""
        self.plog("<", protocol_log.redact(line.decode("utf-8", "replace").rstrip("\r\n")))

    async def _handle_client(self) -> None:
        self.runtime.sessions.add(self)  # from the start: stop() closes it even before its banner
        try:
            if self._proxy_peer is not None and not await self._proxy_header():
                return
            if self.policy is None and self.refusal is None:
                return  # the connection was gone before it was taken
            if self.refusal is not None:
                await self.push(self.refusal.line())
                return
            # One turn of the loop lets bytes already sent arrive: a client that speaks
            # before the greeting is not an SMTP client waiting for it (postscreen's
            # pregreet test). After a PROXY header, so the header is not speaking first.
            await _one_turn()
            if self._reader._buffer:
                self._pregreet()
                if self.transport is not None and not self.transport.is_closing():
                    await self.push(self.reply(replies.PREGREET))
                return
            await self._commands()
        except asyncio.CancelledError:
            # The end of input (aiosmtpd cancels the session's task) or stop() before the
            # engine's loop, which closes the connection itself, began.
            if self.transport is not None:
                self.transport.close()
            raise
        finally:
            if self.transport is None:  # else kept until connection_lost: stop() cuts a TLS close
                self.runtime.sessions.discard(self)
                self._release()

    async def _commands(self) -> None:
        """The banner (the connector's; ``push``'s other checks are for other replies),
        then every command until the connection ends."""
        assert self.policy is not None
        self._greeted = True
        banner = self.policy.connector.banner
        if not self.policy.connector.extensions.enhanced_status_codes:
            banner = replies.strip_enhanced(banner)
        self._writer.write(banner.encode("ascii") + b"\r\n")
        await self._writer.drain()
        if self.plog.log is not None:
            self.plog(">", banner)
        # Without a protocol log, and with enhanced status codes kept, a success is written
        # as it is (``push``).
        self._plain = (
            self.plog.log is None and self.policy.connector.extensions.enhanced_status_codes
        )
        await engine.serve(self)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # One timer for the session, moved on only when it fires (engine.InactivityTimer).
        self._timeout_handle = self._idle.reset(duration or self._timeout_duration)

    def _pregreet(self) -> None:
        """Bytes before the greeting: a PROXY header from a peer not trusted for one is
        closed without a word; anything else is a client that did not wait."""
        if proxy.start(self._reader._buffer[:12]) is not proxy.Start.OTHER:
            peer = self.session.peer if self.session is not None else ("-", 0)
            self._refuse_proxy(
                proxy.Reason.untrusted, f"{peer[0]}:{peer[1]}", "not a trusted proxy"
            )
            return
        assert self.policy is not None
        self.plog("*", "", "client spoke before the greeting")
        health.labelled(health.SESSIONS_DROPPED, self.policy.connector.name, "pregreet").inc()

    # -- replies ------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        line = status.decode() if isinstance(status, bytes) else status
        transport = self.transport
        if (
            self._plain
            and transport is not None
            and line[:1] in ("2", "3")
            and self._close_after is None
        ):
            # A success, on a session whose replies need nothing more (``_commands``).
            transport.write(line.encode("ascii") + b"\r\n")
            if self._paused or self._connection_lost or transport.is_closing():
                await self._writer.drain()  # flow control, or the end of the connection
            return
        session = self.policy
        if not self._greeted:
            self._greeted = True
            if session is not None and line.startswith("220 "):
                line = session.connector.banner
        if session is not None and line[:1] not in ("2", "3"):  # a success counts for nothing
            code = int(line[:3]) if line[:3].isdigit() else 0
            if policy.counts_as_protocol_error(code):
                session.protocol_errors += 1
                if session.protocol_errors > session.connector.limits.max_protocol_errors:
                    line, self._close_after = (
                        replies.TOO_MANY_ERRORS.line(),
                        replies.TOO_MANY_ERRORS,
                    )
            if code >= 500:
                closing = self._close_after is not None
                delay = policy.tarpit_seconds(session, Reply(code, "", "", closing))
                if delay:
                    await asyncio.sleep(delay)
        if session is not None and not session.connector.extensions.enhanced_status_codes:
            line = replies.strip_enhanced(line)
        self._writer.write(line.encode("ascii") + b"\r\n")  # as aiosmtpd's push, unlogged
        await self._writer.drain()
        if self.plog.log is not None:
            for part in line.split("\r\n"):
                self.plog(">", part)
        if session is not None and line[:1] in ("4", "5") and line[:3] not in ("421",):
            health.labelled(health.MESSAGES_REFUSED, session.connector.name, line[:3]).inc()
        if self._close_after is not None or self.refusal is not None:
            self._close_after = None
            if self.transport is not None:
                self.transport.close()
                # Commands the client pipelined behind are not read any more: the
                # session's task ends here (a read from the buffer would not yield).
                if self._handler_coroutine is not None:
                    self._handler_coroutine.cancel()
                    await asyncio.sleep(0)

    def reply(self, reply: Reply) -> str:
        """A hook's answer; a closing reply ends the session once it is sent."""
        if reply.close:
            self._close_after = reply
        return reply.line()

    def junk(self) -> Reply | None:
        """Count a command that moves no message forward; the closing reply once the
        session has sent too many."""
        state = self.policy
        assert state is not None
        state.junk_commands += 1
        refusal = policy.junk_command(state)
        if refusal is not None:
            health.labelled(health.SESSIONS_DROPPED, state.connector.name, "junk-commands").inc()
            self._close_after = refusal
        return refusal

    # -- engine seams -------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        simple = addresses.simple_path(arg) if arg else None
        if simple is not None:
            return simple
        try:
            return super()._getaddr(arg)
        except IndexError:  # the RFC 5322 parser trips over e.g. "a@": malformed (553)
            return None, None

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        if result is not None and getattr(self, "_dsn", False):
            for key in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                result.pop(key, None)
        return result

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, lines.RefusedLine):
            return error.reply.line()
        if isinstance(error, TLSSetupException):
            # Anyone can fail a handshake: one line, not a traceback per connection.
            log.info(
                "STARTTLS from %s failed: %s",
                self.policy.remote
                if self.policy is not None
                else self.session and self.session.peer and self.session.peer[0],
                error.__cause__,
            )
            return ""  # the engine closes the connection and sends nothing
        log.exception("session error on connector %s", self.policy and self.policy.connector.name)
        return "451 4.3.0 Internal error, try again later"

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        # RFC 4954 4: no AUTH during a mail transaction, whatever the mechanism.
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push(replies.AUTH_IN_TRANSACTION.line())
            return
        await super().smtp_AUTH(arg)

    async def smtp_PROXY(self, arg: str | None) -> None:
        """A PROXY v1 header after the banner: not from a proxy this session trusts (or it
        would have come first). Closed without a reply, as before the banner."""
        assert self.policy is not None
        via = f" (through {self.policy.via})" if self.policy.via else ""
        self._refuse_proxy(
            proxy.Reason.untrusted, f"{self.policy.remote}{via}", "PROXY header after the banner"
        )
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
            await asyncio.sleep(0)

    smtp_STARTTLS = engine.starttls  # its close bounded (engine.TLS_CLOSE_GRACE)
    smtp_QUIT = engine.quit  # the session's loop ends without cancelling its own task
    smtp_NOOP = commands.counted(SMTP.smtp_NOOP)
    smtp_RSET = commands.counted(SMTP.smtp_RSET)
    smtp_HELP = commands.counted(SMTP.smtp_HELP)
    smtp_VRFY = commands.counted(SMTP.smtp_VRFY)
    smtp_HELO = commands.helo  # HELO, EHLO, MAIL and RCPT without layers our settings leave idle
    smtp_EHLO = commands.ehlo
    smtp_MAIL = commands.mail
    smtp_RCPT = commands.rcpt

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """DATA read in blocks (``data.DataReader``) rather than aiosmtpd's line at a time;
        the same end-of-data, line-ending and size rules, at a fraction of the cost."""
        assert self.session is not None and self.envelope is not None
        if not self.session.host_name:  # aiosmtpd's check_helo_needed
            await self.push("503 Error: send HELO first")
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        assert self.policy is not None
        reader = self._reader
        self.intake = taking = intake.Intake(
            self.policy,
            self.data_size_limit,
            self.delivery,
            self.envelope.mail_from or "",
            tuple(self.envelope.rcpt_tos),
            tuple(self.envelope.mail_options),
            tuple(self.envelope.rcpt_options),
        )
        try:
            # Each block read resets the idle timeout: the client is not idle.
            rest = await taking.receive(reader, self._reset_timeout)
            if rest is None:
                return  # the client went away mid-DATA: nothing was acknowledged
            if rest:
                reader._buffer[0:0] = rest  # pipelined commands after the end marker
            refusal = taking.refusal
            if refusal is not None:
                self.envelope = Envelope()  # aiosmtpd's _set_post_data_state
                await self.push(self.reply(refusal))
                return
            assert self.event_handler is not None
            status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
            self.envelope = Envelope()
            await self.push(status)
        finally:
            taking.discard()  # nothing, once handed to the delivery
            self.intake = None

    async def _smtp_x_exps(self, arg: str | None) -> None:
        await sasl.exps_command(self, arg)

    async def smtp_XEXCH50(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        assert self.policy is not None
        answer = policy.exch50(self.policy)
        if answer.refusal:
            await self.push(answer.line())
            return
        parts = (arg or "").split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) > EXCH50_MAX:
            await self.push(replies.EXCH50_SYNTAX.line())
            return
        await self.push(answer.line())
        await self._reader.readexactly(int(parts[0]))
        await self.push(replies.EXCH50_OK.line())


@types.coroutine
def _one_turn() -> Generator[None, None, None]:
    """One turn of the event loop: ``asyncio.sleep(0)`` without its own coroutine."""
    yield


# X-EXPS: a command name no Python method can carry; the engine finds commands by name.
setattr(ConnectorSMTP, "smtp_X-EXPS", ConnectorSMTP._smtp_x_exps)
