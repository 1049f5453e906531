"""HAProxy (Debian's package) in front of a receiver, with send-proxy and send-proxy-v2 and
its health checks: real SMTP clients on different loopback addresses land on the connector
their own address selects and are counted as themselves."""

from __future__ import annotations

import csv
import pathlib
import shutil
import smtplib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from smtpgate.receiver import proxy, replies
from smtpgate.receiver.protocol_log import ProtocolLog

from .conftest import free_port
from .helpers import FrontProxy, ranged_connector

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="needs haproxy (apt-get install haproxy; make test installs it)"
)


def _connectors() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("Near", ranged_connector(["127.0.0.64/26"], "near", maxInboundConnectionPerSource=2)),
        ("Loopback", ranged_connector(["127.0.0.0/8"], "loopback")),
    ]


class HAProxy:
    """haproxy -db with a frontend per PROXY version, each to the receiver at ``target``."""

    def __init__(self, folder: pathlib.Path, target: int) -> None:
        self.ports = {"v1": free_port(), "v2": free_port()}
        config = folder / "haproxy.cfg"
        config.write_text(
            "global\n  maxconn 200\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
            "  timeout server 30s\n"
            f"frontend v1\n  bind 127.0.0.1:{self.ports['v1']}\n  default_backend v1\n"
            f"backend v1\n  server receiver 127.0.0.1:{target} send-proxy\n"
            f"frontend v2\n  bind 127.0.0.1:{self.ports['v2']}\n  default_backend v2\n"
            # Health checks send v2's LOCAL command, every 100 ms.
            f"backend v2\n  server receiver 127.0.0.1:{target} send-proxy-v2 "
            "check check-send-proxy inter 100ms\n"
        )
        assert HAPROXY is not None
        self.front = FrontProxy(
            [HAPROXY, "-db", "-f", str(config)], list(self.ports.values()), "haproxy"
        )

    def client(self, version: str, source: str) -> smtplib.SMTP:
        return smtplib.SMTP(
            "127.0.0.1", self.ports[version], source_address=(source, 0), timeout=10
        )

    def stop(self) -> None:
        self.front.stop()


@pytest.fixture
def behind(start: Any, tmp_path: pathlib.Path) -> Iterator[tuple[Any, HAProxy, Any]]:
    log_file = tmp_path / "RECV.LOG"
    plog = ProtocolLog(str(log_file))
    running = start(
        _connectors(), exposure={"trustedProxyRanges": ["127.0.0.1/32"]}, protocol_log=plog
    )
    haproxy = HAProxy(tmp_path, running.port(25))

    def rows() -> list[list[str]]:
        running.stop()
        plog.close()
        lines = log_file.read_text().splitlines()
        return list(csv.reader(line for line in lines if not line.startswith("#")))

    yield running, haproxy, rows
    haproxy.stop()


def _rejected() -> dict[str, float]:
    return {
        r: REGISTRY.get_sample_value("smtpgate_proxy_rejected_total", {"reason": r}) or 0.0
        for r in proxy.Reason
    }


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_clients_behind_haproxy_are_served_as_themselves(
    behind: tuple[Any, HAProxy, Any], version: str
) -> None:
    running, haproxy, rows = behind
    before = _rejected()
    time.sleep(0.3)  # a few of HAProxy's health checks (LOCAL) come and go meanwhile
    for source, banner in (("127.0.0.75", "near"), ("127.0.0.2", "loopback")):
        with haproxy.client(version, source) as client:
            code, text = client.ehlo("client.example")
            assert code == 250
            assert client.sock is not None
            client.sendmail(
                "s@example.org", ["u@contoso.com"], f"Subject: from {source}\r\n\r\nhi\r\n"
            )
        found = [m for m in running.messages() if f"Subject: from {source}".encode() in m]
        (message,) = found
        head = message.split(b"\r\n\r\n", 1)[0].decode()
        assert f"Received: from client.example ([{source}])\r\n" in head
        assert "\t(via PROXY protocol from [127.0.0.1])\r\n" in head
        assert f'via connector "{"Near" if banner == "near" else "Loopback"}"' in head
    assert _rejected() == before  # health checks and clients: nothing refused
    table = rows()
    sessions: dict[str, list[list[str]]] = {}
    for row in table:
        sessions.setdefault(row[2], []).append(row)
    served = {
        s[0][5].split(":")[0]: (s[0][1], [r[8] for r in s if r[6] == "*"][0])
        for s in sessions.values()
        if any(r[6] == "<" for r in s)
    }
    expected_note = f"PROXY {version} TCP4 via 127.0.0.1:"
    assert served["127.0.0.75"][0] == "Near" and served["127.0.0.2"][0] == "Loopback"
    assert all(note.startswith(expected_note) for _, note in served.values())
    # A health check (LOCAL, then a reset) read before its reset is the proxy's own
    # connection; one reset before it is read leaves no trace. Neither is refused.
    checks = [s for s in sessions.values() if any("LOCAL" in r[8] for r in s)]
    assert all(s[0][5].startswith("127.0.0.1:") and s[0][1] == "Loopback" for s in checks)


def test_per_source_limits_count_the_client_not_the_proxy(
    behind: tuple[Any, HAProxy, Any],
) -> None:
    running, haproxy, _ = behind
    held = [haproxy.client("v2", "127.0.0.75") for _ in range(2)]
    for client in held:
        assert client.noop()[0] == 250
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        haproxy.client("v2", "127.0.0.75")
    assert refused.value.smtp_code == replies.TOO_MANY_FROM_SOURCE.code
    # Other clients through the same proxy are counted as themselves.
    others = [haproxy.client("v1", f"127.0.0.{n}") for n in (76, 77)]
    for client in [*held, *others]:
        assert client.noop()[0] == 250
        client.quit()
