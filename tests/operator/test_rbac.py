"""The operator runs with nothing but the chart's rules, bound as the chart binds them when
it watches named namespaces: a Role there and the Lease Role in its own namespace."""

from __future__ import annotations

import json
import pathlib
import time
import uuid
from typing import Any

import yaml

from ..kube_helpers import Operator, condition, eventually, get

FILES = pathlib.Path(__file__).resolve().parents[2] / "charts" / "smtpgate" / "files"


def _role(ns: str, name: str, rules_file: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": ns},
            "rules": yaml.safe_load((FILES / rules_file).read_text()),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}],
        },
    ]


def test_operator_works_with_the_least_privilege_namespaced_roles(
    controlplane: Any, operator: Any, ns: str, tmp_path: pathlib.Path
) -> None:
    name = f"smtpgate-operator-{uuid.uuid4().hex[:6]}"
    controlplane.kubectl("create", "serviceaccount", "operator", "-n", ns)
    items = _role(ns, name, "operator-rules.yaml") + _role(ns, f"{name}-lease", "lease-rules.yaml")
    controlplane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
    )
    token = controlplane.kubectl(
        "create", "token", "operator", "-n", ns, "--duration=1h"
    ).stdout.strip()
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sa",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": controlplane.plane.server,
                            "certificate-authority": str(
                                controlplane.plane.workdir / "pki" / "ca.crt"
                            ),
                        },
                    }
                ],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [
                    {"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": ns}}
                ],
            }
        )
    )
    restricted = Operator(
        str(kubeconfig), tmp_path / "restricted.log", lease_namespace=ns, namespaces=[ns]
    )
    operator.stop()  # the admin operator steps aside, so that every write below is the restricted one's
    try:
        restricted.start()
        controlplane.kubectl(
            "apply",
            "-f",
            "-",
            input=f"""
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec: {{fqdn: mail.contoso.com}}
""",
        )
        eventually(
            lambda: (
                condition(get(controlplane, "rcvc", "default-frontend-ex01", ns), "Ready")["status"]
                == "True"
            ),
            what="the restricted operator to reconcile",
        )
        assert get(controlplane, "statefulset", "ex01-receiver", ns)
        assert get(controlplane, "lease", "smtpgate-operator", ns)["spec"]["holderIdentity"]
        log = restricted.output()
        assert "Forbidden" not in log and " 403" not in log, log[-3000:]

        # The grant is taken away: the operator says so, in a few lines, and backs off.
        controlplane.kubectl("delete", "rolebinding", name, "-n", ns)
        before = len(restricted.output().splitlines())
        controlplane.kubectl(
            "patch", "tsrv", "ex01", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":2}}'
        )
        time.sleep(20)
        lines = restricted.output().splitlines()[before:]
        assert any("403" in line for line in lines), lines
        assert len(lines) < 60, f"{len(lines)} log lines in 20 s"
        assert not any("Traceback" in line for line in lines), lines[:20]
        assert restricted.proc is not None and restricted.proc.poll() is None
    finally:
        restricted.stop()
        operator.start()
