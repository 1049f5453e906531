"""Follows the config file and the certificate files while the receiver runs, and tries
again the bindings that could not listen.

ConfigMap and Secret volumes change by swapping a symlink, so files are compared by
content, not by inode or mtime alone. A config that does not parse, or has a version this
receiver does not know, is refused with a log line; the last good one keeps serving."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pathlib

from pydantic import ValidationError
from smtpgate.connectors.config import ServerConfig

from . import health
from .server import Receiver

log = logging.getLogger(__name__)


def _digest(path: pathlib.Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Watcher:
    """Polls the config file and the certificate files the config names."""

    def __init__(
        self, config_file: str | pathlib.Path, receiver: Receiver, interval: float = 1.0
    ) -> None:
        self.config_file = pathlib.Path(config_file)
        self.receiver = receiver
        self.interval = interval
        self._config_digest = _digest(self.config_file)
        self._cert_digests = self._certificates()
        self._users_digest = self._users()

    def _users(self) -> tuple[str | None, str | None]:
        """The user database file the config names, and its digest."""
        runtime = self.receiver.runtime
        name = runtime.config.user_database_file
        return name, _digest(pathlib.Path(runtime.path(name))) if name else None

    def _certificates(self) -> dict[str, str | None]:
        runtime = self.receiver.runtime
        paths = {
            runtime.path(p)
            for c in runtime.config.connectors
            if c.tls is not None
            for p in (c.tls.cert_file, c.tls.key_file)
        }
        return {p: _digest(pathlib.Path(p)) for p in sorted(paths)}

    async def check(self) -> None:
        await self.receiver.retry()
        await self._check_config()
        users = self._users()
        readable = users[0] is None or users[1] is not None
        if users != self._users_digest and readable and self.receiver.runtime.reload_users():
            self._users_digest = users
        for delivery in self.receiver.runtime.retired():
            await asyncio.to_thread(delivery.close)

    async def _check_config(self) -> None:
        digest = _digest(self.config_file)
        if digest is not None and digest != self._config_digest:
            self._config_digest = digest
            try:
                config = ServerConfig.from_json(self.config_file.read_bytes())
            except (ValidationError, ValueError, OSError) as err:
                first = str(err).splitlines()[0:3]
                log.error(
                    "config %s refused, the last good config keeps serving: %s",
                    self.config_file,
                    " ".join(first),
                )
                health.CONFIG_RELOADS.labels("refused").inc()
            else:
                await self.receiver.apply(config)
                self._cert_digests = self._certificates()
                health.CONFIG_RELOADS.labels("applied").inc()
                log.info("config reloaded: %d connectors", len(config.connectors))
                return
        certificates = self._certificates()
        if certificates != self._cert_digests:
            self._cert_digests = certificates
            self.receiver.runtime.forget_certificates()
            log.info("certificate files changed; the next STARTTLS uses them")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad check
                log.exception("config watch failed; retrying")
