"""kubectl smtpgate against the real apiserver with the operator running: the examples applied
as a user would, the plugin run as a program, directly and through kubectl's plugin lookup."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from ..kube_helpers import apply_examples, condition, eventually, get, wait_ready

BIN = pathlib.Path(sys.executable).parent
PLUGIN = BIN / "kubectl-smtpgate"


def _run(
    args: list[str], env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def examples(controlplane: Any, operator: Any) -> str:
    namespace = "plugin-examples"
    controlplane.kubectl("create", "namespace", namespace)
    apply_examples(controlplane, namespace)
    wait_ready(
        controlplane,
        namespace,
        ("rcvc", "internet-mx01"),
        ("rcvc", "partner-fabrikam"),
        ("rcvc", "submission-mx01"),
        ("tsrv", "mx01"),
    )
    return namespace


def _plugin(controlplane: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([str(PLUGIN), *args, "--kubeconfig", controlplane.kubeconfig])


def test_permissions_is_the_status_as_a_table(controlplane: Any, examples: str) -> None:
    done = _plugin(controlplane, "permissions", "submission-mx01", "-n", examples)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rows = [re.split(" {3,}", line) for line in done.stdout.splitlines()]
    cells: dict[tuple[str, str], list[str]] = {}
    for principal, right, access in rows:
        cells.setdefault((principal, access), []).append(right)
    assert rows[0][0] == "PRINCIPAL" and rows[0][-1] == "ACCESS"
    assert cells[("printer", "Deny")] == ["ms-Exch-SMTP-Accept-Any-Recipient"]
    assert "ms-Exch-SMTP-Submit" in cells[("NT AUTHORITY\\Authenticated Users", "Allow")]
    # Exactly what the operator wrote into the status, one line per right.
    status = get(controlplane, "rcvc", "submission-mx01", examples)["status"]
    assert len(rows) - 1 == sum(len(e["extendedRights"]) for e in status["effectivePermissions"])


def test_which_follows_the_servers_compiled_config(controlplane: Any, examples: str) -> None:
    done = _plugin(
        controlplane, "which", "mx01", "--from", "198.51.100.7", "--port", "25", "-n", examples
    )
    assert done.returncode == 0, done.stderr
    assert "To 192.0.2.10, port 25:\n  connector: partner-fabrikam" in done.stdout
    assert "matched range: 198.51.100.0/24" in done.stdout
    assert "also holds 198.51.100.7: internet-mx01 with 0.0.0.0/0 (less specific)" in done.stdout
    done = _plugin(
        controlplane,
        "which",
        "mx01",
        "--from",
        "10.9.8.7",
        "--port",
        "587",
        "--user",
        "printer",
        "-n",
        examples,
    )
    assert "connector: submission-mx01" in done.stdout
    assert "denied: ms-Exch-SMTP-Accept-Any-Recipient" in done.stdout


def test_status_at_a_glance(controlplane: Any, examples: str) -> None:
    done = _plugin(controlplane, "status", "-n", examples)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    servers = out.split("\n\nCONNECTORS\n")[0]
    assert "mx01   Mailbox   mail.contoso.com" in servers and "True" in servers
    line = next(x for x in out.splitlines() if x.startswith("internet-mx01 "))
    assert "mx01" in line and "192.0.2.10:25" in line and "mail-contoso-com (until " in line
    assert line.split()[-1] == "True"
    assert "ACCEPTED DOMAINS" in out and "*.fabrikam.com" in out
    everywhere = _plugin(controlplane, "status", "-A").stdout
    assert f"\n{examples}   " in everywhere and "NAMESPACE" in everywhere


def test_a_connector_waiting_for_its_server_gets_permissions_from_its_spec(
    controlplane: Any, operator: Any, ns: str
) -> None:
    body = {
        "apiVersion": "smtpgate.io/v1alpha1",
        "kind": "ReceiveConnector",
        "metadata": {"name": "orphan", "namespace": ns},
        "spec": {"server": "nowhere", "usage": "Internet", "bindings": ["0.0.0.0:25"]},
    }
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(body))
    eventually(
        lambda: (
            condition(get(controlplane, "rcvc", "orphan", ns), "Ready")["reason"]
            == "ServerNotFound"
        )
    )
    done = _plugin(controlplane, "permissions", "orphan", "-n", ns)
    assert done.returncode == 0, done.stderr
    assert "computed from the spec (none in the status; Ready False: ServerNotFound)" in done.stderr
    assert "NT AUTHORITY\\ANONYMOUS LOGON   ms-Exch-SMTP-Submit" in done.stdout
    status = _plugin(controlplane, "status", "-n", ns).stdout
    assert "receiveconnector/orphan: Accepted False (ServerNotFound)" in status


def test_what_is_not_there_is_an_error(controlplane: Any, ns: str) -> None:
    done = _plugin(controlplane, "permissions", "missing", "-n", ns)
    assert done.returncode == 1
    assert done.stderr == f'error: receiveconnector "missing" not found in namespace {ns}\n'
    done = _plugin(
        controlplane, "which", "missing", "--from", "192.0.2.1", "--port", "25", "-n", ns
    )
    assert done.returncode == 1 and 'transportserver "missing" not found' in done.stderr
    done = _plugin(controlplane, "which", "x", "--from", "not-an-ip", "--port", "25")
    assert done.returncode == 1 and "not-an-ip" in done.stderr


def test_kubectl_finds_the_plugin_and_it_uses_kubectls_configuration(
    controlplane: Any, examples: str, tmp_path: pathlib.Path
) -> None:
    """kubectl runs kubectl-smtpgate from PATH; the plugin takes KUBECONFIG, the current
    context's namespace, and --context, as kubectl does."""
    kubeconfig = yaml.safe_load(pathlib.Path(controlplane.kubeconfig).read_text())
    context = dict(kubeconfig["contexts"][0])
    context["name"] = "examples"
    context["context"] = {**context["context"], "namespace": examples}
    kubeconfig["contexts"].append(context)
    kubeconfig["current-context"] = "examples"
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(kubeconfig))
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "KUBECONFIG": str(path)}
    kubectl = controlplane.plane.kubectl

    listed = _run([kubectl, "plugin", "list"], env)
    assert str(PLUGIN) in listed.stdout, listed.stdout + listed.stderr
    done = _run([kubectl, "smtpgate", "status"], env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "internet-mx01" in done.stdout  # the context's namespace, no -n
    done = _run(
        [kubectl, "smtpgate", "which", "mx01", "--from", "198.51.100.7", "--port", "25"], env
    )
    assert "connector: partner-fabrikam" in done.stdout, done.stderr
    # --context picks the original context, whose namespace is default: nothing there.
    done = _run([kubectl, "smtpgate", "permissions", "internet-mx01", "--context", "smtpgate"], env)
    assert done.returncode == 1 and "not found in namespace default" in done.stderr
    done = _run([kubectl, "smtpgate", "permissions", "internet-mx01"], env)
    assert done.returncode == 0 and "NT AUTHORITY\\ANONYMOUS LOGON" in done.stdout


def test_get_adpermission_view_shows_the_resolved_server_and_partner_principals(
    controlplane: Any, examples: str
) -> None:
    # examples/05's TransportConfig names the organisation's domain CONTOSO.
    done = _plugin(controlplane, "permissions", "default-ex01", "-n", examples)
    assert done.returncode == 0, done.stderr
    principals = {re.split(" {3,}", line)[0] for line in done.stdout.splitlines()[1:]}
    assert {
        "CONTOSO\\Exchange Servers",
        "CONTOSO\\ExchangeLegacyInterop",
        "MS Exchange\\Hub Transport Servers",
        "MS Exchange\\Edge Transport Servers",
    } <= principals
    assert not any(p.startswith("<Domain>") for p in principals)
    done = _plugin(controlplane, "permissions", "partner-fabrikam", "-n", examples)
    assert "MS Exchange\\Partner Servers" in done.stdout
    done = _plugin(
        controlplane, "which", "mx01", "--from", "198.51.100.7", "--port", "25", "-n", examples
    )
    assert "domain security (*.fabrikam.com, fabrikam.com): MS Exchange\\Partner Servers" in (
        done.stdout
    )
    done = _plugin(
        controlplane, "which", "ex01", "--from", "10.1.2.3", "--port", "717", "-n", examples
    )
    assert (
        "Direct Trust, a Mailbox server's certificate: CONTOSO\\Exchange Servers, "
        "MS Exchange\\Hub Transport Servers\n    may: ms-Exch-Accept-Headers-Forest"
    ) in done.stdout
