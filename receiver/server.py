"""The receiver process's sockets and lifecycle: one listener per binding, shared state
(config, certificates, users, delivery, connection counts), graceful stop."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import uvloop
from smtpgate.connectors.bindings import Binding
from smtpgate.connectors.config import ConnectorConfig, ServerConfig
from smtpgate.connectors.ranges import parse_address

from . import delivery as delivery_mod
from . import identity, mutual_tls, policy, replies, sasl
from .protocol_log import ProtocolLog
from .smtp import ConnectorSMTP
from .users import UserDatabase

log = logging.getLogger(__name__)
UNSPECIFIED = parse_address("0.0.0.0")  # a fresh session's client, until it has its own
PROXY_TIMEOUT = 5.0
PROXY_OPTIONAL_WAIT = 0.25


SWITCH_INTERVAL = 0.0002


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The receiver's event loop: uvloop's, whose sockets and timers cost a fraction of
    the standard loop's on every connection. Tests run on it too. The interpreter's
    switch interval goes down from 5 ms to ``SWITCH_INTERVAL``: a thread back from a
    system call (the spool's committer after each write, rename or sync) waits that long
    at most for the busy event loop to hand it the GIL, so a group commit of n messages
    no longer waits up to n x 5 ms for it. The loop hands over only when a thread asks."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    return uvloop.new_event_loop()


class RateWindow:
    """Messages accepted per key in the last minute (message rate limits). Keys whose
    messages are all older than the window are forgotten, at most one window apart, so
    the map holds only the sources of the last two windows."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.stamps: dict[str, collections.deque[float]] = {}
        self._swept = clock()

    def _trim(self, key: str, now: float) -> collections.deque[float]:
        stamps = self.stamps.setdefault(key, collections.deque())
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            del self.stamps[key]
            return collections.deque()
        return stamps

    def _sweep(self, now: float) -> None:
        if now - self._swept >= self.window:
            self._swept = now
            cutoff = now - self.window
            for key in [k for k, stamps in self.stamps.items() if stamps[-1] <= cutoff]:
                del self.stamps[key]

    def count(self, key: str) -> int:
        return len(self._trim(key, self.clock()))

    def add(self, key: str) -> None:
        now = self.clock()
        self._sweep(now)
        self._trim(key, now)
        self.stamps.setdefault(key, collections.deque()).append(now)


class Counters:
    """Open connections per connector and per (connector, source address)."""

    def __init__(self) -> None:
        self.by_connector: collections.Counter[str] = collections.Counter()
        self.by_source: collections.Counter[tuple[str, str]] = collections.Counter()

    def open(self, connector: str, source: str) -> tuple[int, int]:
        self.by_connector[connector] += 1
        self.by_source[(connector, source)] += 1
        return self.by_connector[connector], self.by_source[(connector, source)]

    def close(self, connector: str, source: str) -> None:
        self.by_connector[connector] -= 1
        self.by_source[(connector, source)] -= 1
        if self.by_source[(connector, source)] <= 0:
            del self.by_source[(connector, source)]


@dataclass
class Listen:
    """Where a binding really listens. In a pod, exactly the binding; tests and the demo map
    all-address bindings onto a loopback address and ports onto free ones."""

    wildcard_v4: str | None = None
    wildcard_v6: str | None = None
    ports: Mapping[int, int] = field(default_factory=dict)
    explicit: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    reuse_port: bool = False

    def address(self, binding: Binding) -> tuple[str, int]:
        if str(binding) in self.explicit:
            return self.explicit[str(binding)]
        host = binding.address
        if binding.all_addresses:
            host = (self.wildcard_v4 if binding.version == 4 else self.wildcard_v6) or host
        return host, self.ports.get(binding.port, binding.port)


class Runtime:
    """What every session shares. With ``deliveries`` (a server config's delivery), a
    config whose next hop changed gets a delivery of its own: new sessions use it, sessions
    in flight finish with the one they started with, which is closed once they are gone
    (``retired``)."""

    def __init__(
        self,
        config: ServerConfig,
        delivery: delivery_mod.Delivery,
        users: UserDatabase | None = None,
        files_root: str | None = None,
        protocol_log: ProtocolLog | None = None,
        deliveries: Callable[[ServerConfig], delivery_mod.Delivery] | None = None,
        proxy_timeout: float = PROXY_TIMEOUT,
        proxy_optional_wait: float = PROXY_OPTIONAL_WAIT,
    ) -> None:
        self.config = config
        # A trusted proxy's header: how long it may take (Required, and once a header has
        # begun), and how long the banner waits for one that may not come (Optional).
        self.proxy_timeout = proxy_timeout
        self.proxy_optional_wait = min(proxy_optional_wait, proxy_timeout)
        self.protocol_log = protocol_log
        self.delivery = self._hint(delivery)
        self.deliveries = deliveries
        self._retired: list[delivery_mod.Delivery] = []
        self.files_root = files_root
        if users is None and config.user_database_file:
            users = UserDatabase.load(self.path(config.user_database_file))
        self.users = users
        self.counters = Counters()
        self.rates = RateWindow()
        self.sessions: set[ConnectorSMTP] = set()
        self._tls: dict[str, ssl.SSLContext | None] = {}
        self._fresh: dict[tuple[int, int], tuple[ServerConfig, policy.Session]] = {}

    def fresh_session(self, config: ServerConfig, connector: ConnectorConfig) -> policy.Session:
        """A session on ``connector`` (of ``config``) as every one starts: anonymous, no
        TLS, offered what the server has credentials for. Made once per connector and
        config; each client's is a copy (``policy.Session.for_client``). An entry holds
        its config and connector, so neither id can be taken by another object while it
        is kept."""
        key = (id(config), id(connector))
        kept = self._fresh.get(key)
        if kept is not None and kept[0] is config and kept[1].connector is connector:
            return kept[1]
        if len(self._fresh) >= 64:  # configs come and go: keep the last few
            self._fresh.clear()
        fresh = policy.Session(
            connector=connector,
            remote=UNSPECIFIED,
            accepted_domains=config.accepted_domains,
            principals=identity.anonymous(connector),
            **sasl.session_offers(config, connector),
        )
        self._fresh[key] = (config, fresh)
        return fresh

    def replace(self, config: ServerConfig) -> None:
        old, self.config = self.config, config
        self.forget_certificates()
        if self.deliveries is not None and (
            config.next_hop != old.next_hop or config.fqdn != old.fqdn
        ):
            try:
                delivery = self.deliveries(config)
            except (ValueError, OSError) as err:
                log.error("next hop refused, the last one keeps serving: %s", err)
                return
            self._retired.append(self.delivery)
            self.delivery = self._hint(delivery)
            log.info("next hop is now %s", _describe(config))

    def _hint(self, delivery: delivery_mod.Delivery) -> delivery_mod.Delivery:
        """Tell a maildir spool when its event loop serves one session only, so that a
        lone message commits on the loop instead of waking the committer thread. A TLS
        session still in its close (up to ``engine.TLS_CLOSE_GRACE``) counts as one: for
        that second a lone message goes through the committer, only a little slower."""
        if isinstance(delivery, delivery_mod.MaildirDelivery):
            delivery.alone = lambda: len(self.sessions) <= 1
        return delivery

    def retired(self) -> list[delivery_mod.Delivery]:
        """Deliveries replaced by a reload that no session uses any more: to be closed."""
        in_use = {id(session.delivery) for session in self.sessions}
        done = [d for d in self._retired if id(d) not in in_use]
        self._retired = [d for d in self._retired if id(d) in in_use]
        return done

    def reload_users(self) -> bool:
        """Read the user database again (its file changed); False when it cannot be read
        (the last one keeps serving)."""
        name = self.config.user_database_file
        if name is None:
            self.users = None
            return True
        try:
            self.users = UserDatabase.load(self.path(name))
        except OSError as err:
            log.error("user database %s unreadable, the last one keeps serving: %s", name, err)
            return False
        log.info("user database reloaded: %d users", len(self.users.hashes))
        return True

    def forget_certificates(self) -> None:
        """Certificate files changed: the next STARTTLS loads them again."""
        self._tls.clear()

    def path(self, path: str) -> str:
        """A file the config names, under ``files_root`` where one is set (tests, demo)."""
        if self.files_root is None:
            return path
        return os.path.join(self.files_root, path.lstrip("/"))

    def tls_context(self, connector: ConnectorConfig) -> ssl.SSLContext | None:
        """The STARTTLS context of a connector, or None where STARTTLS is not offered."""
        if not connector.starttls_available or connector.tls is None:
            return None
        asks = connector.asks_client_certificate
        key = f"{connector.tls.cert_file}|{connector.tls.key_file}|{asks}"
        if key not in self._tls:
            try:
                context = mutual_tls.server_context(
                    self.path(connector.tls.cert_file), self.path(connector.tls.key_file), asks
                )
            except (OSError, ssl.SSLError) as err:
                log.error("connector %r: cannot load its certificate: %s", connector.name, err)
                self._tls[key] = None
                return None
            self._tls[key] = context
        return self._tls[key]


class Receiver:
    """Listens on every binding of every connector in the config."""

    def __init__(self, runtime: Runtime, listen: Listen | None = None) -> None:
        self.runtime = runtime
        self.listen = listen or Listen()
        self.listeners: dict[Binding, asyncio.base_events.Server] = {}
        self.failed: dict[str, str] = {}

    @property
    def servers(self) -> list[asyncio.base_events.Server]:
        return list(self.listeners.values())

    def bindings(self) -> dict[Binding, list[str]]:
        found: dict[Binding, list[str]] = {}
        for connector in self.runtime.config.connectors:
            for binding in connector.parsed_bindings:
                found.setdefault(binding, []).append(connector.name)
        return found

    async def start(self) -> None:
        await self._listen(self.bindings())

    @property
    def serving(self) -> bool:
        """Every binding of the config listens (readiness)."""
        return bool(self.listeners) and not self.failed

    async def retry(self) -> None:
        """Try again the bindings that could not listen (a port in use, say)."""
        if self.failed:
            await self._listen({b: n for b, n in self.bindings().items() if str(b) in self.failed})

    async def apply(self, config: ServerConfig) -> None:
        """Serve ``config`` from now on: new sessions use it, sessions in flight keep the
        config they started with; listeners open and close as bindings come and go."""
        self.runtime.replace(config)
        wanted = self.bindings()
        for binding in list(self.listeners):
            if binding not in wanted:
                self.listeners.pop(binding).close()
                log.info("stopped listening on %s", binding)
        self.failed = {b: m for b, m in self.failed.items() if b in {str(w) for w in wanted}}
        await self._listen({b: n for b, n in wanted.items() if b not in self.listeners})

    async def _listen(self, wanted: dict[Binding, list[str]]) -> None:
        loop = asyncio.get_running_loop()
        for binding, names in sorted(wanted.items()):
            host, port = self.listen.address(binding)
            try:
                sock = _listening_socket(host, port, binding.version, self.listen.reuse_port)
            except OSError as err:
                message = f"cannot listen on {host}:{port}: {err.strerror}"
                if self.failed.get(str(binding)) != message:
                    log.error("binding %s of %s: %s", binding, ", ".join(names), message)
                self.failed[str(binding)] = message
                continue
            server = await loop.create_server(
                lambda b=binding: ConnectorSMTP(self.runtime, b), sock=sock
            )
            self.listeners[binding] = server
            self.failed.pop(str(binding), None)
            log.info("listening on %s for %s", binding, ", ".join(names))

    async def stop(self, grace: float = 0) -> None:
        for server in self.servers:
            server.close()
        if grace and self.runtime.sessions:
            deadline = asyncio.get_running_loop().time() + grace
            while self.runtime.sessions and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        for session in list(self.runtime.sessions):  # the grace is over: tell them, then cut
            if session.transport is not None and not session.transport.is_closing():
                session.transport.write((replies.SHUTTING_DOWN.line() + "\r\n").encode())
                session.transport.close()
        if self.runtime.sessions:
            await asyncio.sleep(0.2)
        for session in list(self.runtime.sessions):
            for transport in (session.transport, session._original_transport):
                if transport is not None:
                    transport.abort()  # type: ignore[attr-defined]
        await asyncio.sleep(0)
        tasks = [
            s._handler_coroutine
            for s in self.runtime.sessions
            if s._handler_coroutine is not None and not s._handler_coroutine.done()
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()
        self.listeners.clear()


def _describe(config: ServerConfig) -> str:
    hop = config.next_hop
    return hop.path if hop.type == "Maildir" else f"{hop.type} {hop.host}:{hop.port}"


def _listening_socket(
    host: str, port: int, version: int, reuse_port: bool = False
) -> socket.socket:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
