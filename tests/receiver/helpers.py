"""Small tools for driving a receiver over a raw socket, byte for byte."""

from __future__ import annotations

import base64
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

from smtpgate.connectors import config, specs
from smtpgate.receiver.replies import Reply


class Raw:
    """A raw SMTP client: send exact bytes, read whole replies. Every one made is closed
    after its test (``close_all``)."""

    opened: list[Raw] = []

    def __init__(self, port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(10)
            self.sock.bind((source, 0))
            self.sock.connect((host, port))
        except OSError:
            self.sock.close()
            raise
        self.buffer = b""
        Raw.opened.append(self)

    @classmethod
    def close_all(cls) -> None:
        for raw in cls.opened:
            raw.close()
        cls.opened.clear()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        """One whole (possibly multi-line) reply: code and the text lines joined."""
        lines = []
        while True:
            line = self._line().decode()
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    def command(self, text: str) -> tuple[int, str]:
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def starttls(self, cafile: str, server_hostname: str) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=cafile)
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buffer = b""
        return self.sock

    def closed(self) -> bool:
        """True when the server has closed the connection (after any pending bytes)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def replies_until_closed(self) -> list[tuple[int, str]]:
        """Every reply still to come, until the server closes the connection."""
        found = []
        while True:
            try:
                found.append(self.reply())
            except (ConnectionError, TimeoutError):
                return found

    def close(self) -> None:
        self.sock.close()


# A connector for command-by-command comparisons: anyone on loopback, no tarpit, and
# room for every protocol error a script makes.
LOOP = {
    "usage": "Custom",
    "bindings": ["0.0.0.0:25"],
    "remoteIPRanges": ["127.0.0.0/8"],
    "permissionGroups": ["AnonymousUsers"],
    "maxProtocolErrors": 100,
    "tarpitIntervalSeconds": 0,
}


def transcript(port: int, script: list[bytes]) -> list[object]:
    """The replies to ``script``'s command lines, one at a time after the banner ("closed"
    where the server ended the session)."""
    raw = Raw(port)
    seen: list[object] = [raw.reply()]
    for line in script:
        try:
            raw.send(line + b"\r\n")
            seen.append(raw.reply())
        except (ConnectionError, OSError):
            seen.append("closed")
            break
    raw.close()
    return seen


def openssl_starttls(port: int, ca_file: pathlib.Path, *extra: str) -> list[str]:
    """openssl s_client doing STARTTLS with the receiver on ``port``, the chain verified
    against ``ca_file`` (a failed verification ends it), with ``extra`` arguments."""
    return [
        "openssl",
        "s_client",
        "-starttls",
        "smtp",
        "-connect",
        f"127.0.0.1:{port}",
        "-CAfile",
        str(ca_file),
        "-verify_return_error",
        *extra,
    ]


def expected(reply: Reply) -> tuple[int, str]:
    """What ``Raw.reply`` reads for ``reply``."""
    return reply.code, reply.line()[4:]


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def internet_config_file(
    folder: pathlib.Path, bindings: tuple[str, ...] = ("0.0.0.0:25",)
) -> pathlib.Path:
    """A ServerConfig file with one Internet connector on 0.0.0.0:25 (or ``bindings``; no
    tarpit) and the accepted domain contoso.com, for tests that run the receiver as a
    process."""
    server = specs.TransportServerSpec(fqdn="mail.contoso.com")
    connector = specs.ReceiveConnectorSpec.model_validate(
        {
            "server": "ex01",
            "usage": "Internet",
            "bindings": list(bindings),
            "tarpitIntervalSeconds": 0,
        }
    )
    compiled = config.compile_server(
        "ex01",
        "mail",
        server,
        [("Internet", connector)],
        [specs.AcceptedDomainSpec(domain_name="contoso.com")],
    )
    path = folder / "config.json"
    path.write_text(compiled.config.to_json())
    return path


def start_process(
    tmp: pathlib.Path,
    port: int,
    *extra: str,
    config: pathlib.Path | None = None,
    stderr: Any = subprocess.DEVNULL,
    wrap: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """The receiver as a process, serving ``config`` (``internet_config_file``'s by
    default) with port 25 on ``port``, once it says it is ready; ``wrap`` is a command
    that runs it (e.g. strace)."""
    proc = subprocess.Popen(
        [
            *wrap,
            sys.executable,
            "-m",
            "smtpgate.receiver",
            "--config",
            str(config or internet_config_file(tmp)),
            "--spool",
            str(tmp / "spool"),
            "--listen-v4",
            "127.0.0.1",
            "--port-map",
            f"25={port}",
            "--protocol-log",
            os.devnull,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def custom_connector(name: str = "Edge", **extra: Any) -> list[tuple[str, dict[str, Any]]]:
    """One Custom connector on 0.0.0.0:25 for loopback clients: anonymous and BasicAuth
    users, TLS, no tarpit; ``extra`` spec fields on top."""
    return [
        (
            name,
            {
                "usage": "Custom",
                "bindings": ["0.0.0.0:25"],
                "remoteIPRanges": ["127.0.0.0/8"],
                "authMechanisms": ["TLS", "BasicAuth"],
                "permissionGroups": ["AnonymousUsers", "ExchangeUsers"],
                "tarpitIntervalSeconds": 0,
                **extra,
            },
        )
    ]


def ranged_connector(ranges: list[str], banner: str, **extra: Any) -> dict[str, Any]:
    """A Custom connector on 0.0.0.0:25 for anonymous clients from ``ranges``, whose banner
    ends in ``banner`` (to tell which one a client landed on), logged verbosely."""
    return {
        "usage": "Custom",
        "bindings": ["0.0.0.0:25"],
        "remoteIPRanges": ranges,
        "permissionGroups": ["AnonymousUsers"],
        "tarpitIntervalSeconds": 0,
        "banner": f"220 mail.contoso.com {banner}",
        "protocolLoggingLevel": "Verbose",
        **extra,
    }


class FrontProxy:
    """A proxy program (HAProxy, nginx) run in the foreground in front of a receiver: started
    with ``argv``, ready once every one of ``ports`` on 127.0.0.1 accepts connections."""

    def __init__(self, argv: list[str], ports: list[int], what: str) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    assert self.proc.poll() is None, self.proc.stderr and self.proc.stderr.read()
                    assert time.monotonic() < deadline, f"{what} did not listen"
                    time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
