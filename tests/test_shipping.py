"""What ships: the images' entry points, the Helm chart, the examples and the demo."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import tomllib
from typing import Any

import pytest
import yaml

from hack.pki import Authority, tls_secret

from .kube_helpers import condition, eventually, get

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "smtpgate"


@pytest.mark.parametrize("room", ["operator", "receiver"])
def test_image_entry_point_is_a_console_script_that_starts(room: str) -> None:
    dockerfile = (ROOT / room / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry[0] in scripts
    assert re.search(r"^USER 10001", dockerfile, re.M), "the image runs as non-root"
    # a pinned public base by default; tests build on a local one (hack/node/base.sh)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11\.\d+-slim-bookworm$", dockerfile, re.M)
    assert all(
        f.startswith("FROM ${BASE_IMAGE}") for f in re.findall(r"^FROM .*", dockerfile, re.M)
    )
    script = pathlib.Path(sys.executable).parent / entry[0]
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and "usage:" in done.stdout


def _helm(controlplane: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [controlplane.plane.helm, "--kubeconfig", controlplane.kubeconfig, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_helm_lint_is_clean(controlplane: Any) -> None:
    out = _helm(controlplane, "lint", str(CHART)).stdout
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out


def test_chart_installs_into_the_apiserver(controlplane: Any, ns: str) -> None:
    # The session's CRDs are already there (applied from crds/); the chart's copy is checked below.
    _helm(
        controlplane,
        "install",
        "gate",
        str(CHART),
        "-n",
        ns,
        "--set",
        "crds.install=false",
        "--set",
        "operator.replicas=2",
        "--wait=false",
    )
    deployment = get(controlplane, "deployment", "gate-smtpgate-operator", ns)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == "gate-smtpgate"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert {e["name"] for e in pod["containers"][0]["env"]} >= {
        "POD_NAMESPACE",
        "SMTPGATE_RECEIVER_IMAGE",
    }
    role = get(controlplane, "clusterrole", "gate-smtpgate-operator", "")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"receiveconnectors", "transportservers/status", "statefulsets"} <= resources
    assert not any("*" in rule["verbs"] for rule in role["rules"]), "least privilege: no wildcards"
    binding = get(controlplane, "clusterrolebinding", "gate-smtpgate-operator", "")
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "gate-smtpgate",
        "namespace": ns,
    }
    lease_role = get(controlplane, "role", "gate-smtpgate-operator-lease", ns)
    named = [r for r in lease_role["rules"] if "get" in r["verbs"]]
    assert named and all(r["resourceNames"] == ["smtpgate-operator"] for r in named)
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts, "the API client needs a writable temporary directory"
    _helm(controlplane, "uninstall", "gate", "-n", ns)


def test_chart_with_watched_namespaces_binds_roles_there_only(controlplane: Any, ns: str) -> None:
    out = _helm(
        controlplane,
        "template",
        "gate",
        str(CHART),
        "-n",
        ns,
        "--set",
        "operator.watchNamespaces={mail-a,mail-b}",
    ).stdout
    documents = [yaml.safe_load(d) for d in out.split("\n---\n") if d.strip()]
    kinds = {(d["kind"], d["metadata"].get("namespace")) for d in documents if d}
    assert ("Role", "mail-a") in kinds and ("RoleBinding", "mail-b") in kinds
    assert not any(k in ("ClusterRole", "ClusterRoleBinding") for k, _ in kinds)
    args = next(d for d in documents if d and d["kind"] == "Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]["args"]
    assert "--namespace=mail-a" in args and "--namespace=mail-b" in args


def test_chart_renders_the_crds_kept_on_uninstall(controlplane: Any) -> None:
    out = _helm(controlplane, "template", "gate", str(CHART)).stdout
    documents = [d for d in out.split("\n---\n") if "kind: CustomResourceDefinition" in d]
    assert len(documents) == 3
    assert all("helm.sh/resource-policy: keep" in d for d in documents)
    crds_off = _helm(
        controlplane, "template", "gate", str(CHART), "--set", "crds.install=false"
    ).stdout
    assert "CustomResourceDefinition" not in crds_off


@pytest.mark.parametrize(
    "value",
    [
        "bogus=1",
        "operator.replicas=-1",
        "operator.logLevel=LOUD",
        "operator.image.pullPolicy=Sometimes",
    ],
)
def test_broken_value_is_refused_by_the_schema(controlplane: Any, value: str) -> None:
    done = _helm(controlplane, "template", "gate", str(CHART), "--set", value, check=False)
    assert (
        done.returncode != 0 and "values don't meet the specifications of the schema" in done.stderr
    )


def test_every_example_is_applied_and_becomes_ready(
    controlplane: Any, operator: Any, ns: str
) -> None:
    controlplane.kubectl(
        "apply", "--server-side", "-f", str(ROOT / "hack" / "cert-manager-stand-in.yaml")
    )
    controlplane.kubectl("wait", "--for=condition=Established", "crd/certificates.cert-manager.io")
    # What cert-manager would write for examples/07-certificate.yaml.
    cert, key = Authority("Contoso Issuing CA", "Contoso").issue(
        "mail.contoso.com", ["mail.contoso.com"]
    )
    controlplane.kubectl(
        "apply", "-f", "-", input=json.dumps(tls_secret("mail-contoso-com", ns, cert, key))
    )
    controlplane.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples"))
    names = json.loads(controlplane.kubectl("get", "rcvc", "-n", ns, "-o", "json").stdout)
    expected = {"internet-mx01", "partner-fabrikam", "submission-mx01"}
    assert expected <= {i["metadata"]["name"] for i in names["items"]}

    def all_ready() -> bool:
        items = json.loads(controlplane.kubectl("get", "rcvc", "-n", ns, "-o", "json").stdout)[
            "items"
        ]
        assert len(items) == 8  # three written, five created with ex01
        for item in items:
            assert condition(item, "Ready")["status"] == "True", item["metadata"]["name"]
        return True

    eventually(all_ready, timeout=60, what="every example connector Ready")
    for name in expected:
        assert (
            condition(get(controlplane, "rcvc", name, ns), "CertificateReady")["status"] == "True"
        )
    for kind, name in (
        ("accepteddomain", "contoso"),
        ("accepteddomain", "fabrikam-subdomains"),
        ("transportserver", "ex01"),
        ("transportserver", "mx01"),
    ):
        eventually(
            lambda k=kind, n=name: (
                condition(get(controlplane, k, n, ns), "Ready")["status"] == "True"
            )
        )


def test_demo_runs_its_script(controlplane: Any) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "demo.py"), "--exit-after-script"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for outcome in (
        "relay for an anonymous client: RCPT friend@foreign.example -> 550 5.7.54",
        "mail for an accepted domain: RCPT user@contoso.com -> 250",
        "STARTTLS with the selected certificate: subject CN=mail.contoso.com",
        "authenticated submission relays",
    ):
        assert f"[ok] {outcome}" in out, out
    assert "UNEXPECTED" not in out and "demo finished" in out
