"""``make demo``'s steps on the node: the chart installed, examples/ applied, the receiver
pods shown Running, and the demo's SMTP conversation held with a pod through mx01's
load-balancer addresses (the demo on a machine of its own starts the node itself)."""

from __future__ import annotations

import pathlib

import pytest

from hack import demo  # the script make demo runs (hack/ is a namespace package)
from hack.node import demo as node_demo
from hack.node.standins import StandIns

from ..conftest import NodeCluster


def test_demo_steps_run_on_the_node(
    node: NodeCluster,
    standins: StandIns,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        found = node_demo.on_node(node.node, standins, tmp_path, demo.say)
        demo.conversation(found.internet, found.submission, found.ca_file, found.spool, False)
        out = capsys.readouterr().out
        assert "mx01-receiver-0" in out and "Running" in out
        for outcome in (
            "relay for an anonymous client: RCPT friend@foreign.example -> 550 5.7.54",
            "mail for an accepted domain: RCPT user@contoso.com -> 250",
            "STARTTLS with the selected certificate: subject CN=mail.contoso.com",
            "authenticated submission relays",
        ):
            assert f"[ok] {outcome}" in out, out
        assert "UNEXPECTED" not in out
        assert list((found.spool / "new").iterdir())
    finally:
        node.kubectl("delete", "namespace", node_demo.NAMESPACE, "--wait=false", check=False)
        node.kubectl(
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            "app.kubernetes.io/instance=smtpgate-demo",
            check=False,
        )
