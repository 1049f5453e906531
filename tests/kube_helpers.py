"""Helpers for tests against the control plane: polling and reading (the operator process
and the workload-status stand-in live in hack/controlplane/processes.py)."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

from hack.controlplane.processes import (  # noqa: F401 - re-exported for the tests
    NO_STANDIN_PREFIX,
    Operator,
    WorkloadStatusStandIn,
    writes_by,
)
from hack.pki import Authority, ca_config_map, tls_secret


def eventually(check: Callable[[], Any], timeout: float = 45, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (and no AssertionError)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, KeyError, IndexError, json.JSONDecodeError) as err:
            last = err
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {last}")


def create_pod(controlplane: Any, pod: dict[str, Any]) -> None:
    """Create a pod object (nothing runs it: its status is the test's to write). The
    ServiceAccount admission plugin wants the namespace's default ServiceAccount, which the
    controller manager makes a moment after the namespace, and later still on a busy
    machine: it is made here when it is not there yet."""
    ns = pod["metadata"]["namespace"]
    made = controlplane.kubectl("create", "serviceaccount", "default", "-n", ns, check=False)
    assert made.returncode == 0 or "already exists" in made.stderr, made.stderr

    def applied() -> bool:
        done = controlplane.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)
        if done.returncode != 0:
            raise AssertionError(done.stderr)
        return True

    eventually(applied, what=f"the pod {pod['metadata']['name']}")


def get(controlplane: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    done = controlplane.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return json.loads(done.stdout)


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return cond
    raise AssertionError(f"no {kind} condition yet")


def wait_ready(
    controlplane: Any, namespace: str, *objects: tuple[str, str], timeout: float = 60
) -> None:
    """Wait until each (kind, name) has its Ready condition True."""
    for kind, name in objects:
        eventually(
            lambda k=kind, n=name: (
                condition(get(controlplane, k, n, namespace), "Ready")["status"] == "True"
            ),
            timeout=timeout,
            what=f"{kind}/{name} Ready",
        )


EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def apply_examples(controlplane: Any, namespace: str) -> None:
    """Apply examples/ into ``namespace`` as a user would, cert-manager's part played by the
    stand-in CRD and a Secret as cert-manager would write it for examples/07."""
    controlplane.kubectl(
        "apply", "--server-side", "-f", str(EXAMPLES.parent / "hack" / "cert-manager-stand-in.yaml")
    )
    controlplane.kubectl("wait", "--for=condition=Established", "crd/certificates.cert-manager.io")
    cert, key = Authority("Contoso Issuing CA", "Contoso").issue(
        "mail.contoso.com", ["mail.contoso.com"]
    )
    controlplane.kubectl(
        "apply", "-f", "-", input=json.dumps(tls_secret("mail-contoso-com", namespace, cert, key))
    )
    # examples/05's partner trust anchor, as its comment says to create it.
    fabrikam = Authority("Fabrikam Issuing CA", "Fabrikam")
    anchors = ca_config_map("fabrikam-partner-ca", namespace, fabrikam)
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(anchors))
    controlplane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))


def apply(controlplane: Any, *manifests: str) -> None:
    """kubectl apply of YAML documents."""
    controlplane.kubectl("apply", "-f", "-", input="\n---\n".join(manifests))


def receiver_config(controlplane: Any, ns: str, server: str = "ex01") -> dict[str, Any]:
    """The ServerConfig the operator wrote into ``<server>-receiver``."""
    cm = get(controlplane, "configmap", f"{server}-receiver", ns)
    return dict(json.loads(cm["data"]["config.json"]))


def patch_status(controlplane: Any, kind: str, name: str, ns: str, status: dict[str, Any]) -> None:
    """Write an object's status as its controller (or kubelet) would."""
    controlplane.kubectl(
        "patch",
        kind,
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def condition_is(
    controlplane: Any, kind: str, name: str, ns: str, type_: str, status: str, reason: str
) -> dict[str, Any]:
    """The ``type_`` condition of an object, asserted to have ``status`` and ``reason``."""
    cond = condition(get(controlplane, kind, name, ns), type_)
    assert (cond["status"], cond["reason"]) == (status, reason), cond
    return cond


def edit_while_held(
    controlplane: Any, ns: str, reason: str, before: dict[str, Any], server: str = "ex01"
) -> None:
    """Edit a server's pod template while what it mounts is missing (its Ready False for
    ``reason``): once the edit is reconciled, the workload is still ``before`` (as it was
    while serving), the same object with the same template, neither rolled nor deleted."""
    edit = {"spec": {"pod": {"annotations": {"example.com/rolled": "yes"}}}}
    controlplane.kubectl("patch", "tsrv", server, "-n", ns, "--type=merge", "-p", json.dumps(edit))
    generation = get(controlplane, "tsrv", server, ns)["metadata"]["generation"]
    eventually(
        lambda: get(controlplane, "tsrv", server, ns)["status"]["observedGeneration"] == generation,
        what="the edit reconciled",
    )
    time.sleep(2)  # anything the reconcile would write, written
    after = get(controlplane, "statefulset", f"{server}-receiver", ns)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == before["spec"]["template"]
    condition_is(controlplane, "tsrv", server, ns, "Ready", "False", reason)


def held_edit_applied(controlplane: Any, ns: str, server: str = "ex01") -> None:
    """Once what was missing is back: the edit ``edit_while_held`` made reaches the
    workload, and the server is Ready again."""
    eventually(
        lambda: (
            get(controlplane, "statefulset", f"{server}-receiver", ns)["spec"]["template"][
                "metadata"
            ]["annotations"].get("example.com/rolled")
            == "yes"
        ),
        timeout=10,
        what="the held edit applied",
    )
    eventually(
        lambda: condition_is(controlplane, "tsrv", server, ns, "Ready", "True", "Serving"),
        timeout=10,
        what="Ready again",
    )
