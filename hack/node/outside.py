"""Clients from outside the cluster: a network namespace whose addresses lie in the
documentation ranges (198.51.100.0/24, 203.0.113.0/24), wired to the host by a veth pair.
Their connections enter the host as a load balancer's would (not from a local address), so
kube-proxy keeps their source address for a Service with ``externalTrafficPolicy: Local``
and the pod sees the client's own address.

    with Outside.start() as outside:
        sock = outside.connect("192.0.2.10", 25, source="198.51.100.7")

Sockets are opened inside the namespace (``setns`` in a short-lived thread) and used from
any thread afterwards: a socket stays in the namespace it was made in.
"""

from __future__ import annotations

import ctypes
import os
import random
import smtplib
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hack.node.harness import OUTSIDE_RANGES

CLONE_NEWNET = 0x40000000
CLIENTS = ("198.51.100.7", "203.0.113.7")  # one client address in each outside range


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


@dataclass
class Outside:
    name: str
    host_link: str

    @classmethod
    @contextmanager
    def start(cls) -> Iterator[Outside]:
        tag = f"{os.getpid() % 10000:04d}{random.randrange(16**3):03x}"
        outside = cls(name=f"sg-outside-{tag}", host_link=f"sgo{tag}")
        try:
            outside._create()
            yield outside
        finally:
            outside.stop()

    def _create(self) -> None:
        _ip("netns", "add", self.name)
        _ip(
            "link",
            "add",
            self.host_link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.name,
        )
        for net, client in zip(OUTSIDE_RANGES, CLIENTS, strict=True):
            gateway = net.replace(".0/24", ".1/24")
            _ip("addr", "add", gateway, "dev", self.host_link)
            _ip("-n", self.name, "addr", "add", f"{client}/24", "dev", "eth0")
        _ip("link", "set", self.host_link, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "link", "set", "eth0", "up")
        _ip("-n", self.name, "route", "add", "default", "via", OUTSIDE_RANGES[0][:-4] + "1")

    def stop(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def connect(
        self, host: str, port: int, source: str = CLIENTS[1], timeout: float = 10
    ) -> socket.socket:
        """A TCP connection from ``source`` (an address in the namespace) to ``host:port``."""
        result: list[socket.socket | BaseException] = []

        def inside() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            try:
                with open(f"/run/netns/{self.name}") as handle:
                    if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.bind((source, 0))
                    sock.connect((host, port))
                except OSError:
                    sock.close()
                    raise
                result.append(sock)
            except BaseException as err:  # handed to the caller's thread
                result.append(err)

        thread = threading.Thread(target=inside)  # its namespace dies with it
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def smtp(self, host: str, port: int, source: str = CLIENTS[1]) -> smtplib.SMTP:
        """smtplib's client over a connection from the namespace, banner read."""
        outside = self

        class Client(smtplib.SMTP):
            def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
                return outside.connect(host, port, source, timeout)

        client = Client(timeout=15)
        client._host = host  # type: ignore[attr-defined]  # STARTTLS's server_hostname
        code, banner = client.connect(host, port)
        client.banner = (code, banner.decode(errors="replace"))  # type: ignore[attr-defined]
        return client
