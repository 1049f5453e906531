"""nginx's stream module with ``proxy_protocol on`` in front of a receiver: real SMTP clients
on different loopback addresses land on the connector their own address selects and are
counted as themselves, not as the proxy."""

from __future__ import annotations

import pathlib
import shutil
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest
from smtpgate.receiver import replies

from .conftest import free_port
from .helpers import FrontProxy, ranged_connector

NGINX = shutil.which("nginx")
STREAM_MODULE = pathlib.Path("/usr/lib/nginx/modules/ngx_stream_module.so")
pytestmark = pytest.mark.skipif(
    NGINX is None or not STREAM_MODULE.exists(),
    reason="needs nginx with its stream module (make test installs nginx-light and "
    "libnginx-mod-stream)",
)


class Nginx:
    """nginx in the foreground: one stream server sending PROXY v1 to the receiver."""

    def __init__(self, folder: pathlib.Path, target: int) -> None:
        self.port = free_port()
        (folder / "logs").mkdir(exist_ok=True)
        config = folder / "nginx.conf"
        config.write_text(
            f"load_module {STREAM_MODULE};\n"
            "daemon off;\nmaster_process off;\n"
            f"pid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'logs' / 'error.log'} warn;\n"
            "events { worker_connections 64; }\n"
            "stream {\n"
            f"  server {{ listen 127.0.0.1:{self.port};\n"
            f"    proxy_pass 127.0.0.1:{target};\n"
            "    proxy_protocol on; }\n"
            "}\n"
        )
        assert NGINX is not None
        self.front = FrontProxy([NGINX, "-p", str(folder), "-c", str(config)], [self.port], "nginx")

    def client(self, source: str) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, source_address=(source, 0), timeout=10)

    def stop(self) -> None:
        self.front.stop()


@pytest.fixture
def behind(start: Any, tmp_path: pathlib.Path) -> Iterator[tuple[Any, Nginx]]:
    running = start(
        [
            ("Near", ranged_connector(["127.0.0.64/26"], "near", maxInboundConnectionPerSource=2)),
            ("Loopback", ranged_connector(["127.0.0.0/8"], "loopback")),
        ],
        exposure={"trustedProxyRanges": ["127.0.0.1/32"]},
    )
    nginx = Nginx(tmp_path, running.port(25))
    yield running, nginx
    nginx.stop()


def test_clients_behind_nginx_are_served_as_themselves(behind: tuple[Any, Nginx]) -> None:
    running, nginx = behind
    for source, connector in (("127.0.0.100", "Near"), ("127.0.0.2", "Loopback")):
        with nginx.client(source) as client:
            assert client.ehlo("client.example")[0] == 250
            client.sendmail(
                "s@example.org", ["u@contoso.com"], f"Subject: from {source}\r\n\r\nhi\r\n"
            )
        (message,) = [m for m in running.messages() if f"Subject: from {source}".encode() in m]
        head = message.split(b"\r\n\r\n", 1)[0].decode()
        assert f"Received: from client.example ([{source}])\r\n" in head
        assert "\t(via PROXY protocol from [127.0.0.1])\r\n" in head
        assert f'via connector "{connector}"' in head


def test_per_source_limits_count_the_client_behind_nginx(behind: tuple[Any, Nginx]) -> None:
    _, nginx = behind
    held = [nginx.client("127.0.0.75") for _ in range(2)]
    for client in held:
        assert client.noop()[0] == 250
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        nginx.client("127.0.0.75")
    assert refused.value.smtp_code == replies.TOO_MANY_FROM_SOURCE.code
    others = [nginx.client(f"127.0.0.{n}") for n in (76, 100)]
    for client in [*held, *others]:
        assert client.noop()[0] == 250
        client.quit()
