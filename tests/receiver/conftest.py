"""A real receiver on loopback, in its own event loop thread, for real SMTP clients."""

from __future__ import annotations

import asyncio
import os
import pathlib
import smtplib
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import bcrypt
import pytest
from smtpgate.connectors import config, specs
from smtpgate.receiver import delivery, server
from smtpgate.receiver.users import UserDatabase

from hack.pki import Authority

from .helpers import Raw

FQDN = "mail.contoso.com"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}
# The addresses each test user may send as (the user database's send-as list).
SENDERS = {name: frozenset({f"{name}@contoso.com"}) for name in PASSWORDS}
_HASHES = {
    name: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)) for name, pw in PASSWORDS.items()
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pki:
    """A test CA and a server certificate for FQDN, as files."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.authority = Authority("Contoso Test CA", "Contoso")
        self.ca_file = folder / "ca.crt"
        self.ca_file.write_bytes(self.authority.pem())
        self.cert_file, self.key_file = self.issue("server", FQDN)

    def client_context(self) -> ssl.SSLContext:
        """Verifies the chain; smtplib checks the name against the IP it dialled, so the name
        check is left to the tests that look at the certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.check_hostname = False
        return context

    def issue(self, name: str, cn: str) -> tuple[pathlib.Path, pathlib.Path]:
        cert, key = self.authority.issue(cn, [cn], (-1, 30))
        cert_file, key_file = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        cert_file.write_bytes(cert)
        key_file.write_bytes(key)
        return cert_file, key_file


class Running:
    """A receiver started from connector specs; ``client`` gives a connected smtplib.SMTP."""

    def __init__(
        self,
        tmp: pathlib.Path,
        pki: Pki,
        connectors: list[tuple[str, dict[str, Any]]],
        role: str = "Mailbox",
        domains: list[dict[str, Any]] | None = None,
        with_tls: bool = True,
        protocol_log: Any = None,
        exposure: dict[str, Any] | None = None,
        proxy_timeout: float = server.PROXY_TIMEOUT,
        proxy_optional_wait: float = server.PROXY_OPTIONAL_WAIT,
        kerberos: Any = None,
        ntlm: Any = None,
        org: Any = None,
    ) -> None:
        server_spec = specs.TransportServerSpec.model_validate(
            {"fqdn": FQDN, "role": role, "exposure": exposure or {}}
        )
        parsed = [
            (name, specs.ReceiveConnectorSpec.model_validate({"server": "ex01", **data}))
            for name, data in connectors
        ]
        tls = (
            {
                name: config.TlsFiles(
                    cert_file=str(pki.cert_file),
                    key_file=str(pki.key_file),
                    source="tls-secret",
                    not_after="2030-01-01T00:00:00Z",
                )
                for name, _ in connectors
            }
            if with_tls
            else {}
        )
        domains = (
            domains
            if domains is not None
            else [
                {"domainName": "contoso.com"},
                {"domainName": "*.fabrikam.com", "domainType": "InternalRelay"},
            ]
        )
        compiled = config.compile_server(
            "ex01",
            "mail",
            server_spec,
            parsed,
            [specs.AcceptedDomainSpec.model_validate(d) for d in domains],
            tls=tls,
            kerberos=kerberos,
            ntlm=ntlm,
            org=org,
        )
        assert compiled.rejected == {}, compiled.rejected
        self.config = compiled.config
        self.spool = tmp / "spool"
        ports = {b.port for c in self.config.connectors for b in c.parsed_bindings}
        self.listen = server.Listen("127.0.0.1", "::1", {p: free_port() for p in ports})
        self.runtime = server.Runtime(
            self.config,
            delivery.MaildirDelivery(self.spool),
            UserDatabase(dict(_HASHES), dict(SENDERS)),
            protocol_log=protocol_log,
            proxy_timeout=proxy_timeout,
            proxy_optional_wait=proxy_optional_wait,
        )
        self.receiver = server.Receiver(self.runtime, self.listen)
        self.loop = server.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.receiver.start())

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def port(self, configured: int) -> int:
        return self.listen.ports[configured]

    def client(self, port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> smtplib.SMTP:
        return smtplib.SMTP(host, self.port(port), source_address=(source, 0), timeout=10)

    def messages(self) -> list[bytes]:
        folder = self.spool / "new"
        return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.exists() else []

    async def _cancel_background(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.receiver.stop())
        self.call(self._cancel_background())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        for retired in [*self.runtime.retired(), self.runtime.delivery]:
            retired.close()


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    yield
    Raw.close_all()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start(tmp_path: pathlib.Path, pki: Pki) -> Iterator[Any]:
    started: list[Running] = []

    def make(connectors: list[tuple[str, dict[str, Any]]], **kwargs: Any) -> Running:
        running = Running(tmp_path / f"r{len(started)}", pki, connectors, **kwargs)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real MIT KDC on loopback with the tests' principals (tests/receiver/kdc.py); this
    process uses its krb5.conf from here on (the receivers accept with it)."""
    from . import kdc

    missing = kdc.missing()
    if missing:
        pytest.skip(f"MIT Kerberos missing: {', '.join(missing)} (make kerberos installs it)")
    folder = tmp_path_factory.mktemp("kdc")
    server = kdc.Kdc(folder)
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield kdc.Realm(server, folder)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def as_user(realm: Any) -> Iterator[Any]:
    """Run this process's GSS-API client with a principal's credential cache."""
    saved = os.environ.get("KRB5CCNAME")

    def use(principal: str, password: str | None = None, lifetime: str = "") -> None:
        os.environ["KRB5CCNAME"] = realm.ccache(principal, password, lifetime)["KRB5CCNAME"]

    yield use
    if saved is None:
        os.environ.pop("KRB5CCNAME", None)
    else:
        os.environ["KRB5CCNAME"] = saved
