"""The CRDs from crds/ as the real kube-apiserver serves them."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

CONNECTOR = """
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  server: ex01
  usage: {usage}
  bindings: ["0.0.0.0:2525"]
  remoteIPRanges: ["192.0.2.0/24"]
"""


@pytest.fixture
def namespace(controlplane) -> str:  # type: ignore[no-untyped-def]
    name = f"t-{uuid.uuid4().hex[:8]}"
    controlplane.kubectl("create", "namespace", name)
    return name


def test_crds_are_established(controlplane) -> None:  # type: ignore[no-untyped-def]
    out = controlplane.kubectl("get", "crd", "-o", "json").stdout
    crds = {i["metadata"]["name"]: i for i in json.loads(out)["items"]}
    for name in ("receiveconnectors", "transportservers", "accepteddomains"):
        conditions = {
            c["type"]: c["status"] for c in crds[f"{name}.smtpgate.io"]["status"]["conditions"]
        }
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"


def test_kubectl_explain_teaches_remote_ip_ranges(controlplane) -> None:  # type: ignore[no-untyped-def]
    # The apiserver publishes a new CRD's OpenAPI shortly after it is Established.
    deadline = time.monotonic() + 60
    while True:
        done = controlplane.kubectl("explain", "receiveconnector.spec.remoteIPRanges", check=False)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    out = done.stdout
    assert "most" in out and "specific range wins" in " ".join(out.split())


def test_get_shows_printer_columns(controlplane, namespace: str) -> None:  # type: ignore[no-untyped-def]
    controlplane.kubectl(
        "apply", "-f", "-", input=CONNECTOR.format(name="rc1", namespace=namespace, usage="Custom")
    )
    header = (
        controlplane.kubectl("get", "receiveconnectors", "-n", namespace)
        .stdout.splitlines()[0]
        .split()
    )
    assert header == ["NAME", "SERVER", "USAGE", "BINDINGS", "READY", "AGE"]
    row = controlplane.kubectl("get", "rcvc", "-n", namespace).stdout.splitlines()[1]
    assert "ex01" in row and "Custom" in row and "0.0.0.0:2525" in row
    category = controlplane.kubectl("get", "smtpgate", "-n", namespace).stdout
    assert "receiveconnector.smtpgate.io/rc1" in category


def test_changing_usage_is_rejected_with_the_cel_message(controlplane, namespace: str) -> None:  # type: ignore[no-untyped-def]
    controlplane.kubectl(
        "apply", "-f", "-", input=CONNECTOR.format(name="rc2", namespace=namespace, usage="Custom")
    )
    done = controlplane.kubectl(
        "apply",
        "-f",
        "-",
        input=CONNECTOR.format(name="rc2", namespace=namespace, usage="Internet"),
        check=False,
    )
    assert done.returncode != 0
    assert "usage is immutable: it is set at creation only" in done.stderr


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        ("  bindngs: []\n", 'unknown field "spec.bindngs"'),
        ("  maxRecipientsPerMessage: lots\n", "spec.maxRecipientsPerMessage"),
        ("  usage2: Client\n", 'unknown field "spec.usage2"'),
    ],
)
def test_unknown_field_or_wrong_type_is_rejected(
    controlplane, namespace: str, patch: str, words: str
) -> None:  # type: ignore[no-untyped-def]
    manifest = CONNECTOR.format(name="rc3", namespace=namespace, usage="Custom") + patch
    done = controlplane.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert done.returncode != 0 and words in done.stderr


def test_owned_configmap_is_garbage_collected(controlplane, namespace: str) -> None:  # type: ignore[no-untyped-def]
    controlplane.kubectl(
        "apply",
        "-f",
        "-",
        input=CONNECTOR.format(name="owner", namespace=namespace, usage="Custom"),
    )
    uid = controlplane.kubectl(
        "get", "rcvc", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": namespace,
            "ownerReferences": [
                {
                    "apiVersion": "smtpgate.io/v1alpha1",
                    "kind": "ReceiveConnector",
                    "name": "owner",
                    "uid": uid,
                }
            ],
        },
        "data": {"k": "v"},
    }
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(configmap))
    controlplane.kubectl("delete", "rcvc", "owner", "-n", namespace, "--wait=true")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = controlplane.kubectl("get", "configmap", "owned", "-n", namespace, check=False)
        if done.returncode != 0 and "NotFound" in done.stderr:
            return
        time.sleep(0.5)
    raise AssertionError("the owned ConfigMap outlived its owner")


@pytest.mark.parametrize("tool", ["kubectl", "helm"])
def test_tools_run_from_the_cache(controlplane, tool: str) -> None:  # type: ignore[no-untyped-def]
    binary = getattr(controlplane.plane, tool)
    args = ["version", "--client"] if tool == "kubectl" else ["version", "--short"]
    out = subprocess.run([binary, *args], capture_output=True, text=True, check=True).stdout
    assert ("v1.36.3" if tool == "kubectl" else "v3.22.0") in out
