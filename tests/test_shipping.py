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

from .kube_helpers import apply_examples, condition, eventually, get, wait_ready

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
    assert len(documents) == len(list((ROOT / "crds").glob("*.yaml"))) == 4
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
    apply_examples(controlplane, ns)
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
    wait_ready(
        controlplane,
        ns,
        ("accepteddomain", "contoso"),
        ("accepteddomain", "fabrikam-subdomains"),
        ("transportserver", "ex01"),
        ("transportserver", "mx01"),
        timeout=45,
    )


def test_demo_runs_its_script(controlplane: Any) -> None:
    done = subprocess.run(
        # --loopback: the node tests hold the one node a host may run (see test_demo_on_node)
        [sys.executable, str(ROOT / "hack" / "demo.py"), "--exit-after-script", "--loopback"],
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


def _rendered(controlplane: Any, *sets: str) -> list[dict[str, Any]]:
    args = [a for value in sets for a in ("--set", value)]
    out = _helm(controlplane, "template", "gate", str(CHART), "-n", "mail", *args).stdout
    return [d for d in (yaml.safe_load(doc) for doc in out.split("\n---\n")) if d]


def test_chart_knobs_a_platform_team_expects(controlplane: Any) -> None:
    docs = _rendered(
        controlplane,
        "fullnameOverride=mailgate",
        "imagePullSecrets[0].name=regcred",
        "operator.podAnnotations.team=mail",
        "operator.replicas=2",
        "global.imageRegistry=registry.example",
        "metrics.serviceMonitor.enabled=true",
        "metrics.podMonitor.enabled=true",
    )
    by_kind = {d["kind"]: d for d in docs}
    deployment = by_kind["Deployment"]
    assert deployment["metadata"]["name"] == "mailgate-operator"
    pod = deployment["spec"]["template"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["annotations"] == {"team": "mail"}
    assert by_kind["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert by_kind["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"
    assert by_kind["PodMonitor"]["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "smtpgate-receiver",
        "app.kubernetes.io/managed-by": "smtpgate-operator",
    }
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "health"
    single = {d["kind"] for d in _rendered(controlplane, "operator.replicas=1")}
    assert "PodDisruptionBudget" not in single and "ServiceMonitor" not in single


def test_chart_readme_and_notes_stand_alone(controlplane: Any) -> None:
    readme = _helm(controlplane, "show", "readme", str(CHART)).stdout
    assert "crds.install=false" in readme and "helm uninstall" in readme
    notes = _helm(
        controlplane,
        "install",
        "gate",
        str(CHART),
        "--dry-run",
        "-n",
        "mail",
        "--set",
        "crds.install=false",  # the session's CRDs were applied without Helm
    ).stdout.split("NOTES:", 1)[1]
    assert "examples/" not in notes and "kind: TransportServer" in notes


def test_a_second_release_installs_beside_the_first(controlplane: Any, ns: str) -> None:
    other = f"{ns}-b"
    controlplane.kubectl("create", "namespace", other)
    try:
        for release, namespace in (("first", ns), ("second", other)):
            _helm(
                controlplane,
                "install",
                release,
                str(CHART),
                "-n",
                namespace,
                "--set",
                "crds.install=false",
                "--set",
                f"operator.watchNamespaces={{{namespace}}}",
                "--wait=false",
            )
        assert get(controlplane, "role", "second-smtpgate-operator", other)
        assert get(controlplane, "role", "first-smtpgate-operator", ns)
    finally:
        _helm(controlplane, "uninstall", "first", "-n", ns, check=False)
        _helm(controlplane, "uninstall", "second", "-n", other, check=False)
        controlplane.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_every_dependency_is_pinned_and_installed_at_its_pin() -> None:
    from importlib import metadata

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    names = {
        re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-")
        for r in wanted
        if not r.startswith("smtpgate")
    }
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    assert names <= set(pins), names - set(pins)
    for name in names:
        assert metadata.version(name) == pins[name], name


def test_release_workflow_builds_every_image_and_the_chart() -> None:
    """The release workflow cannot run here; this keeps it pointing at what exists."""
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    images = flow["jobs"]["images"]
    rooms = images["strategy"]["matrix"]["room"]
    assert sorted(rooms) == ["operator", "receiver"]
    assert all((ROOT / room / "Dockerfile").exists() for room in rooms)
    build = next(s for s in images["steps"] if s.get("id") == "build")["with"]
    assert "linux/arm64" in build["platforms"] and build["push"] is True
    assert any("cosign sign" in s.get("run", "") for s in images["steps"])
    chart = " ".join(s.get("run", "") for s in flow["jobs"]["chart"]["steps"])
    assert "helm package charts/smtpgate" in chart and (CHART / "Chart.yaml").exists()


@pytest.mark.parametrize(("room", "other"), [("receiver", "operator"), ("operator", "receiver")])
def test_each_image_installs_its_own_room_pinned(room: str, other: str) -> None:
    dockerfile = (ROOT / room / "Dockerfile").read_text()
    install = next(line for line in dockerfile.splitlines() if "pip install" in line)
    assert f"'.[{room}]'" in install and "-c constraints.txt" in install
    assert f".[{other}]" not in install
    assert "org.opencontainers.image.licenses" in dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not any(dep.startswith("kubernetes") for dep in extras["receiver"])
    assert not any(dep.startswith("aiosmtpd") for dep in extras["operator"])
