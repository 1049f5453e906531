"""The README's recipe for draining the spool of a replica gone for good is a pod the real
API server admits: run with --dry-run=server, it mounts the replica's claim and runs the
drain command (the command itself is tested against Postfix in
tests/receiver/test_queue.py)."""

from __future__ import annotations

import json
import pathlib
import shlex
from typing import Any

from ..kube_helpers import eventually

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _recipe() -> list[str]:
    text = README.read_text()
    start = text.index("kubectl -n mail run drain-ex01-2")
    block = text[start : text.index("```", start)]
    command = block.split("\n  kubectl -n mail delete")[0].replace("\\\n", " ")
    return shlex.split(command)


def test_the_drain_recipe_is_a_pod_the_api_server_admits(controlplane: Any, ns: str) -> None:
    args = _recipe()
    assert args[:5] == ["kubectl", "-n", "mail", "run", "drain-ex01-2"]
    args = [a for a in args[5:] if a not in ("--rm", "-i")]

    def admitted() -> dict[str, Any]:
        done = controlplane.kubectl(
            "-n", ns, "run", "drain-ex01-2", *args, "--dry-run=server", "-o", "json", check=False
        )
        assert done.returncode == 0, done.stderr  # the namespace's ServiceAccount may lag
        return dict(json.loads(done.stdout))

    pod = eventually(admitted, what="the drain pod admitted")
    spec = pod["spec"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "spool-ex01-receiver-2"
    container = spec["containers"][0]
    assert container["command"][:3] == ["python", "-m", "smtpgate.receiver.drain"]
    assert (
        container["command"][container["command"].index("--spool") + 1]
        == (container["volumeMounts"][0]["mountPath"])
    )
    assert spec["restartPolicy"] == "Never"
