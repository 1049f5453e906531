"""Receiver pods the chart's operator runs, under what a node does to them: ``kill -9`` of
the receiver during a load run (every message that got a 250 is in the spool after the
container restarts), SIGTERM from a pod deletion during sessions (they finish within
terminationGracePeriodSeconds or get a 421, never a reset), and as many concurrent
maximum-size messages as the connector allows under the memory limit the operator sets."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hack.node import pods
from hack.node.standins import StandIns

from ..kube_helpers import eventually
from ..receiver.helpers import Raw
from .chart import Release
from .conftest import measured

INACTIVITY = 10  # the connector's idle limit, which sets the receiver's SIGTERM grace


class Server:
    def __init__(self, release: Release, standins: StandIns, name: str) -> None:
        self.release, self.node, self.standins, self.name = release, release.node, standins, name
        self.ns = release.namespace

    def pod(self) -> dict[str, Any]:
        out = self.node.kubectl(
            "get", "pod", "-n", self.ns, f"{self.name}-receiver-0", "-o", "json"
        )
        return dict(json.loads(out.stdout))

    def ready(self) -> bool:
        status = self.pod()["status"]
        return any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])

    def spooled(self) -> set[str]:
        folder = self.standins.claim_folder(self.ns, f"spool-{self.name}-receiver-0")
        subjects = set()
        for message in folder.rglob("new/*"):
            for line in message.read_text(errors="replace").splitlines():
                if line.startswith("Subject: "):
                    subjects.add(line.removeprefix("Subject: "))
                    break
        return subjects


def _apply(
    release: Release,
    server: str,
    limits: dict[str, Any],
    bindings: tuple[str, ...] = ("0.0.0.0:25",),
    exposure: str = "ClusterIP",
) -> None:
    manifests = [
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "TransportServer",
            "metadata": {"name": server, "namespace": release.namespace},
            # Edge: no implicit Mailbox delivery connector, whose 5000 connections and 300 s
            # idle limit would set the memory limit and the SIGTERM grace
            "spec": {
                "fqdn": f"{server}.contoso.com",
                "role": "Edge",
                "createDefaultConnectors": False,
                "exposure": {"type": exposure},
            },
        },
        {
            "apiVersion": "smtpgate.io/v1alpha1",
            "kind": "ReceiveConnector",
            "metadata": {"name": f"{server}-in", "namespace": release.namespace},
            "spec": {
                "server": server,
                "usage": "Internet",
                "bindings": list(bindings),
                "connectionInactivityTimeoutSeconds": INACTIVITY,
                "tarpitIntervalSeconds": 0,
                **limits,
            },
        },
    ]
    for body in manifests:
        release.node.kubectl("apply", "-f", "-", input=json.dumps(body))
    release.wait_ready("transportserver", server, timeout=180)


@pytest.fixture(scope="module")
def load01(release: Release, standins: StandIns) -> Iterator[Server]:
    release.node.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "smtpgate.io/v1alpha1",
                "kind": "AcceptedDomain",
                "metadata": {"name": "lifecycle", "namespace": release.namespace},
                "spec": {"domainName": "lifecycle.example"},
            }
        ),
    )
    _apply(release, "load01", {"maxInboundConnectionPerSource": 50})
    yield Server(release, standins, "load01")
    release.node.kubectl(
        "delete", "transportserver", "load01", "-n", release.namespace, "--wait=false", check=False
    )


def _send(host: str, subject: str, size: int = 2000) -> tuple[int, str]:
    """One message: the reply that ended it (a 250 to DATA when it was accepted)."""
    client = Raw(25, host=host, source="0.0.0.0")
    try:
        steps = (
            ("", 220),
            ("EHLO load.example", 250),
            ("MAIL FROM:<load@example.org>", 250),
            ("RCPT TO:<user@lifecycle.example>", 250),
            ("DATA", 354),
        )
        for command, expected in steps:
            code, text = client.command(command) if command else client.reply()
            if code != expected:
                return code, f"{command or 'banner'}: {text}"
        lines = (b"x" * 76 + b"\r\n") * max(1, size // 78)
        client.send(b"Subject: " + subject.encode() + b"\r\n\r\n" + lines + b".\r\n")
        return client.reply()
    finally:
        client.close()


def test_kill_9_during_load_loses_no_acknowledged_message(load01: Server) -> None:
    host = load01.pod()["status"]["podIP"]
    acknowledged: list[str] = []
    refused: list[str] = []
    attempts = [0]
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            subject = uuid.uuid4().hex
            attempts[0] += 1
            try:
                code, text = _send(host, subject)
            except (OSError, ConnectionError) as err:
                refused.append(str(err))
                time.sleep(0.1)
                continue
            if code == 250:
                acknowledged.append(subject)
            else:
                refused.append(f"{code} {text}")

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        try:
            eventually(lambda: len(acknowledged) >= 30, timeout=60, what="load flowing")
        except AssertionError as err:
            raise AssertionError(f"{err}; last refusals: {refused[-5:]}") from None
        before = len(acknowledged)
        pods.kill(load01.node.node, load01.pod(), signal.SIGKILL)
        killed = time.monotonic()
        eventually(
            lambda: (
                load01.pod()["status"]["containerStatuses"][0]["restartCount"] >= 1
                and load01.ready()
            ),
            timeout=120,
            what="the receiver container restarted and Ready",
        )
        back = time.monotonic() - killed
        after = len(acknowledged)
        eventually(lambda: len(acknowledged) > after + 10, timeout=60, what="load after restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    missing = set(acknowledged) - load01.spooled()
    measured(
        f"kill -9 under load: {len(acknowledged)} messages got 250 ({before} before the kill), "
        f"{attempts[0]} tried, {len(missing)} missing; Ready again after {back:.1f} s"
    )
    assert not missing
    status = load01.pod()["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 137


def test_sigterm_lets_sessions_finish_or_tells_them_421(load01: Server) -> None:
    """The pod is deleted mid-session: a message in DATA completes with 250 and is
    spooled; a client still talking at the end of the receiver's grace gets a 421 before
    the close, never a bare reset; all within terminationGracePeriodSeconds."""
    pod = load01.pod()
    host = pod["status"]["podIP"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    sending = Raw(25, host=host, source="0.0.0.0")
    assert sending.reply()[0] == 220
    sending.command("EHLO term.example")
    sending.command("MAIL FROM:<load@example.org>")
    sending.command("RCPT TO:<user@lifecycle.example>")
    assert sending.command("DATA")[0] == 354
    sending.send(b"Subject: during-sigterm\r\n\r\nfirst half\r\n")
    talking = Raw(25, host=host, source="0.0.0.0")
    assert talking.reply()[0] == 220
    talking.command("EHLO slow.example")

    load01.node.kubectl("delete", "pod", "-n", load01.ns, pod["metadata"]["name"], "--wait=false")
    deleted = time.monotonic()
    time.sleep(2)
    sending.send(b"second half\r\n.\r\n")
    assert sending.reply()[0] == 250
    assert sending.command("QUIT")[0] in (221, 421)
    sending.close()

    replies = []
    ended = "open"
    while time.monotonic() - deleted < grace + 5:
        try:
            code, text = talking.command("NOOP")
        except (ConnectionError, OSError) as err:
            ended = f"{type(err).__name__}: {err}"
            break
        replies.append(code)
        if code == 421:
            ended = "421"
            break
        time.sleep(2)
    took = time.monotonic() - deleted
    talking.close()
    measured(f"SIGTERM: a session still talking got {ended} after {took:.1f} s (grace {grace} s)")
    assert ended == "421", (ended, replies)
    assert took < grace
    assert set(replies) <= {250, 421}
    eventually(lambda: "during-sigterm" in load01.spooled(), what="the message in the spool")


def test_concurrent_maximum_size_messages_fit_the_operators_memory_limit(
    release: Release, standins: StandIns
) -> None:
    connections, size = 16, 20 * 1024 * 1024
    _apply(
        release,
        "big01",
        {
            "maxInboundConnection": connections,
            "maxInboundConnectionPerSource": connections,
            "maxInboundConnectionPercentagePerSource": 100,
            "maxMessageSize": "20MB",
        },
    )
    server = Server(release, standins, "big01")
    try:
        pod = server.pod()
        limit = pods.memory_limit(pods.container_pid(release.node.node, pod))
        assert limit == (256 + connections // 2) * 1024 * 1024  # 256Mi + 512Ki each
        host = pod["status"]["podIP"]
        results: list[bool] = []

        def one(index: int) -> None:
            try:
                results.append(_send(host, f"big-{index}", size - 64 * 1024)[0] == 250)
            except (OSError, ConnectionError):
                results.append(False)

        pid = pods.container_pid(release.node.node, pod)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        rss = 0
        while any(t.is_alive() for t in threads) and time.monotonic() - started < 300:
            rss = max(rss, pods.memory_rss(pid))
            time.sleep(0.1)
        for thread in threads:
            thread.join(10)
        took = time.monotonic() - started
        pod = server.pod()
        peak = pods.memory_peak(pid)
        measured(
            f"{connections} concurrent 20MB messages in {took:.1f} s under a {limit >> 20} MiB "
            f"limit: anonymous memory at most {rss >> 20} MiB (sampled every 0.1 s), cgroup "
            f"peak {peak >> 20} MiB with the spool's page cache"
        )
        assert rss < limit
        assert results == [True] * connections
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        assert {f"big-{i}" for i in range(connections)} <= server.spooled()
    finally:
        release.node.kubectl(
            "delete",
            "transportserver",
            "big01",
            "-n",
            release.namespace,
            "--wait=false",
            check=False,
        )


def test_host_network_pod_binds_port_25_on_the_node_address(
    release: Release, standins: StandIns
) -> None:
    """No sysctl opens low ports on the node's own network; the operator runs such a pod
    as uid 0 with NET_BIND_SERVICE alone, and it listens there."""
    node_ip = release.node.node.node_ip  # the bridge's address: nothing else binds it
    _apply(release, "hn01", {}, bindings=(f"{node_ip}:25",), exposure="HostNetwork")
    server = Server(release, standins, "hn01")
    try:
        pod = server.pod()
        assert pod["spec"]["hostNetwork"] is True
        assert pod["status"]["podIP"] == node_ip
        container = pod["spec"]["containers"][0]["securityContext"]
        assert container["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
        client = Raw(25, host=node_ip, source="0.0.0.0")
        code, banner = client.reply()
        client.close()
        assert code == 220 and "hn01.contoso.com" in banner
    finally:
        release.node.kubectl(
            "delete",
            "transportserver",
            "hn01",
            "-n",
            release.namespace,
            "--wait=false",
            check=False,
        )
