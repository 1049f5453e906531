"""Direct Trust end to end: the operator gives two Mailbox servers their self-signed
certificates and publishes them; a real receiver runs from ex01's files as its pod would see
them, and openssl s_client presenting ex02's certificate (read from ex02's Secret) relays
through ex01's Outbound Proxy Frontend connector, while the same client without it may not."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hack.controlplane import podfiles

from .kube_helpers import condition, eventually, get

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "smtpgate.io/v1alpha1",
        "kind": "TransportServer",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"fqdn": f"{name}.contoso.com"},
    }


@pytest.fixture
def ex01(controlplane: Any, operator: Any, ns: str, tmp_path: pathlib.Path) -> Iterator[Any]:
    controlplane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [_server(ns, "ex01"), _server(ns, "ex02")],
            }
        ),
    )
    eventually(
        lambda: (
            condition(get(controlplane, "rcvc", "outbound-proxy-frontend-ex01", ns), "Ready")[
                "status"
            ]
            == "True"
        ),
        what="ex01's Outbound Proxy Frontend connector Ready",
    )

    def published() -> bool:
        cm = get(controlplane, "configmap", "ex01-receiver", ns)
        org = json.loads(cm["data"]["config.json"])["organization"]
        return {t["name"] for t in org["trustedServers"]} == {"ex01", "ex02"}

    eventually(published, what="ex02's certificate in ex01's config")
    config_file = podfiles.lay_out(
        [controlplane.plane.kubectl, "--kubeconfig", controlplane.kubeconfig],
        ns,
        "ex01",
        tmp_path / "pod",
    )
    secret = get(controlplane, "secret", "ex02-receiver-self-signed", ns)
    (tmp_path / "ex02.crt").write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    (tmp_path / "ex02.key").write_bytes(base64.b64decode(secret["data"]["tls.key"]))
    port = _free_port()
    with open(tmp_path / "receiver.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpgate.receiver",
                "--config",
                str(config_file),
                "--files-root",
                str(tmp_path / "pod"),
                "--spool",
                str(tmp_path / "spool"),
                "--protocol-log",
                os.devnull,
                "--listen-v4",
                "127.0.0.1",
                "--listen-v6",
                "::1",
                "--port-map",
                ",".join(f"{p}={_free_port()}" for p in (25, 465, 587, 2525, 475)) + f",717={port}",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == b"ready", (tmp_path / "receiver.log").read_text()
        yield {"port": port, "dir": tmp_path, "spool": tmp_path / "spool"}
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stdout.close()


def _session(port: int, cert: pathlib.Path | None, key: pathlib.Path | None) -> str:
    script = (
        "EHLO ex02.contoso.com\nMAIL FROM:<postmaster@contoso.com>\nRCPT TO:<a@foreign.example>\n"
        "DATA\nSubject: from ex02\n\nhello\n.\nQUIT\n"
    )
    args = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}"]
    args += ["-quiet", "-nocommands", "-crlf", "-name", "ex02.contoso.com"]
    if cert is not None and key is not None:
        args += ["-cert", str(cert), "-key", str(key)]
    done = subprocess.run(args, input=script.encode(), capture_output=True, timeout=60)
    return done.stdout.decode() + done.stderr.decode()


def test_a_server_relays_to_another_with_its_operator_made_certificate(ex01: Any) -> None:
    out = _session(ex01["port"], ex01["dir"] / "ex02.crt", ex01["dir"] / "ex02.key")
    assert "250 2.6.0" in out, out
    assert "CN = ex01.contoso.com" in out or "CN=ex01.contoso.com" in out  # ex01's own
    assert len(list((ex01["spool"] / "new").iterdir())) == 1

    out = _session(ex01["port"], None, None)
    assert "530 5.7.1 Client was not authenticated" in out, out
