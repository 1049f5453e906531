"""The operator on the real kube-apiserver as a cluster would test it: quiet when nothing
changes, a broken spec or a refused child never takes down what serves, Ready follows the
receivers, and what it does is visible (Events, metrics)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from hack.pki import Authority, tls_secret

from ..conftest import CRDS
from ..kube_helpers import (
    apply,
    condition,
    eventually,
    get,
    patch_status,
    receiver_config,
    writes_by,
)

SERVER = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: {name}, namespace: {ns}}}
spec:
  fqdn: mail.contoso.com
  createDefaultConnectors: {defaults}
  exposure: {{type: {exposure}}}
"""
CONNECTOR = """
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: {name}, namespace: {ns}}}
spec:
  server: {server}
  usage: Internet  # anonymous senders: a Partner connector would need domain security
  bindings: ["{binding}"]
  remoteIPRanges: ["{ranges}"]
"""
DOMAIN = """
apiVersion: smtpgate.io/v1alpha1
kind: AcceptedDomain
metadata: {{name: contoso, namespace: {ns}}}
spec: {{domainName: contoso.com}}
"""


def _server(
    ns: str, name: str = "ex01", defaults: bool = True, exposure: str = "LoadBalancer"
) -> str:
    return SERVER.format(
        name=name, ns=ns, defaults="true" if defaults else "false", exposure=exposure
    )


def _connector(
    ns: str,
    name: str,
    server: str = "ex01",
    ranges: str = "198.51.100.0/24",
    binding: str = "0.0.0.0:2526",
) -> str:
    return CONNECTOR.format(name=name, ns=ns, server=server, ranges=ranges, binding=binding)


def _ready(controlplane: Any, kind: str, name: str, ns: str) -> bool:
    return condition(get(controlplane, kind, name, ns), "Ready")["status"] == "True"


def _fqdn(controlplane: Any, ns: str, fqdn: str) -> None:
    patch = json.dumps({"spec": {"fqdn": fqdn}})
    controlplane.kubectl("patch", "tsrv", "ex01", "-n", ns, "--type=merge", "-p", patch)


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_idle_operator_writes_nothing_for_three_minutes(
    controlplane: Any, operator: Any, ns: str
) -> None:
    authority = Authority("Contoso CA", "Contoso")
    cert, key = authority.issue("mail.contoso.com", ["mail.contoso.com"], (-1, 90))
    secret = tls_secret("mail-contoso-com", ns, cert, key)
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(secret))
    apply(
        controlplane,
        _server(ns, "ex01"),
        _server(ns, "ex02", defaults=False),
        DOMAIN.format(ns=ns),
        _connector(ns, "partner", "ex02"),
    )
    names = [
        ("tsrv", "ex01"),
        ("tsrv", "ex02"),
        ("rcvc", "partner"),
        ("rcvc", "default-frontend-ex01"),
        ("rcvc", "client-frontend-ex01"),
    ]
    eventually(
        lambda: all(_ready(controlplane, k, n, ns) for k, n in names),
        timeout=60,
        what="everything Ready",
    )
    eventually(
        lambda: condition(get(controlplane, "accepteddomain", "contoso", ns), "Ready"),
        what="domain status",
    )
    time.sleep(5)  # the echoes of the last writes
    since = _stamp()
    time.sleep(180)  # 36 resyncs at the tests' 5 s period
    writes = [
        e
        for e in writes_by(controlplane.plane.audit_events(), operator.user_agent, since)
        if (e.get("objectRef") or {}).get("namespace") == ns
    ]
    summary = [
        (e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name")) for e in writes
    ]
    assert summary == [], f"the idle operator wrote {len(writes)} times: {summary[:20]}"


def test_a_deleted_default_connector_is_not_recreated(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(controlplane, _server(ns))
    eventually(lambda: get(controlplane, "rcvc", "default-ex01", ns), what="defaults")
    controlplane.kubectl("delete", "rcvc", "default-ex01", "-n", ns)
    eventually(
        lambda: (
            "default-ex01"
            not in {c["name"] for c in receiver_config(controlplane, ns)["connectors"]}
        ),
        what="the deleted connector to leave the config",
    )
    time.sleep(12)  # two resyncs
    gone = controlplane.kubectl("get", "rcvc", "default-ex01", "-n", ns, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    assert get(controlplane, "tsrv", "ex01", ns)["status"]["defaultConnectorsCreated"] is True


@pytest.fixture
def lenient_transportserver_crd(controlplane: Any) -> Iterator[None]:
    """The TransportServer CRD with a spec the API server does not check, as an older CRD or a
    validation gap would admit. Restored afterwards."""
    crd = yaml.safe_load((CRDS / "transportservers.yaml").read_text())
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        schema["properties"]["spec"] = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }
        schema.pop("x-kubernetes-validations", None)
    controlplane.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd)
    )
    try:
        yield
    finally:
        controlplane.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(CRDS / "transportservers.yaml")
        )


def test_an_invalid_server_spec_keeps_the_last_good_children_serving(
    controlplane: Any, operator: Any, ns: str, lenient_transportserver_crd: None
) -> None:
    apply(controlplane, _server(ns, defaults=False), _connector(ns, "partner"))
    eventually(lambda: _ready(controlplane, "rcvc", "partner", ns), what="partner Ready")

    def children() -> dict[str, tuple[str, str]]:
        out = {}
        for kind in ("configmap", "statefulset", "service"):
            meta = get(controlplane, kind, "ex01-receiver", ns)["metadata"]
            out[kind] = (meta["uid"], meta["resourceVersion"])
        return out

    before = children()
    _fqdn(controlplane, ns, "mail_x.contoso.com")

    def refused() -> dict[str, Any]:
        cond = condition(get(controlplane, "tsrv", "ex01", ns), "Ready")
        assert cond["status"] == "False" and cond["reason"] == "InvalidSpec", cond
        return cond

    cond = eventually(refused, what="Ready=False InvalidSpec")
    assert "fqdn" in cond["message"] and "last good configuration keeps serving" in cond["message"]
    time.sleep(8)  # more than one resync
    assert children() == before, "an invalid spec must not touch what serves"
    partner = condition(get(controlplane, "rcvc", "partner", ns), "Ready")
    assert partner["status"] == "False" and partner["reason"] == "ServerInvalid"
    _fqdn(controlplane, ns, "mail.contoso.com")
    eventually(lambda: _ready(controlplane, "tsrv", "ex01", ns), what="Ready again once fixed")


def test_a_refused_child_fails_only_its_server_and_says_why(
    controlplane: Any, operator: Any, ns: str
) -> None:
    """A cluster policy refuses Services with externalIPs in this namespace."""
    name = f"no-external-ips-{uuid.uuid4().hex[:6]}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["services"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "!has(object.spec.externalIPs) || size(object.spec.externalIPs) == 0",
                    "message": "externalIPs are not allowed in this cluster",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
            },
        },
    }
    controlplane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]}),
    )
    try:
        probe = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "probe", "namespace": ns},
                "spec": {"ports": [{"port": 25}], "externalIPs": ["192.0.2.99"]},
            }
        )
        eventually(
            lambda: (
                "not allowed"
                in controlplane.kubectl(
                    "create", "--dry-run=server", "-f", "-", input=probe, check=False
                ).stderr
            ),
            what="the policy in force",
        )
        apply(
            controlplane,
            _server(ns, "ex01", defaults=False, exposure="ClusterIP"),
            _connector(ns, "partner", "ex01", binding="192.0.2.20:25"),
            _server(ns, "ex02", defaults=False, exposure="ClusterIP"),
            _connector(ns, "other", "ex02"),
        )

        def failed() -> dict[str, Any]:
            cond = condition(get(controlplane, "tsrv", "ex01", ns), "Ready")
            assert cond["status"] == "False" and cond["reason"] == "ApplyFailed", cond
            return cond

        cond = eventually(failed, what="ex01 ApplyFailed")
        assert "Service ex01-receiver-" in cond["message"]
        assert "externalIPs are not allowed" in cond["message"]
        eventually(lambda: _ready(controlplane, "tsrv", "ex02", ns), what="ex02 unaffected")
        eventually(lambda: _ready(controlplane, "rcvc", "other", ns), what="ex02's connector")
        assert get(controlplane, "configmap", "ex01-receiver", ns), "the rest of ex01 is written"
        partner = condition(get(controlplane, "rcvc", "partner", ns), "Ready")
        assert partner["status"] == "False"
        events = controlplane.kubectl("describe", "tsrv", "ex01", "-n", ns).stdout
        assert "ApplyFailed" in events
    finally:
        controlplane.kubectl(
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            name,
            check=False,
        )


def test_ready_follows_the_receivers_and_says_why_they_do_not_serve(
    controlplane: Any, operator: Any, nokubelet_ns: str
) -> None:
    ns = nokubelet_ns
    apply(
        controlplane,
        _server(ns, defaults=False).replace("spec:\n", "spec:\n  replicas: 2\n"),
        _connector(ns, "partner"),
    )
    eventually(lambda: get(controlplane, "statefulset", "ex01-receiver", ns), what="workload")

    def not_ready(kind: str, name: str, reason: str) -> dict[str, Any]:
        cond = condition(get(controlplane, kind, name, ns), "Ready")
        assert cond["status"] == "False" and cond["reason"] == reason, cond
        return cond

    eventually(lambda: not_ready("tsrv", "ex01", "Progressing"), what="server not Ready")
    eventually(lambda: not_ready("rcvc", "partner", "ServerNotReady"), what="connector follows")
    workload = get(controlplane, "statefulset", "ex01-receiver", ns)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "ex01-receiver-0",
            "namespace": ns,
            "labels": workload["spec"]["template"]["metadata"]["labels"],
        },
        "spec": {"containers": [{"name": "receiver", "image": "smtpgate/receiver:missing"}]},
    }
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(pod))
    patch_status(
        controlplane,
        "pod",
        "ex01-receiver-0",
        ns,
        {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "receiver",
                    "image": "smtpgate/receiver:missing",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": "Back-off pulling image",
                        }
                    },
                }
            ],
        },
    )

    def set_workload(ready: int) -> None:
        generation = get(controlplane, "statefulset", "ex01-receiver", ns)["metadata"]["generation"]
        patch_status(
            controlplane,
            "statefulset",
            "ex01-receiver",
            ns,
            {
                "observedGeneration": generation,
                "replicas": 2,
                "readyReplicas": ready,
                "updatedReplicas": 2,
            },
        )

    set_workload(1)
    cond = eventually(lambda: not_ready("tsrv", "ex01", "ReplicasNotReady"), what="1/2 ready")
    assert "1/2 replicas ready" in cond["message"] and "ImagePullBackOff" in cond["message"]
    assert (
        "ImagePullBackOff"
        in condition(get(controlplane, "rcvc", "partner", ns), "Ready")["message"]
    )
    set_workload(2)
    eventually(lambda: _ready(controlplane, "tsrv", "ex01", ns), what="Ready at 2/2")
    eventually(lambda: _ready(controlplane, "rcvc", "partner", ns), what="connector Ready")
    assert get(controlplane, "tsrv", "ex01", ns)["status"]["readyReplicas"] == 2


def test_events_carry_the_objects_uid_so_describe_shows_them(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(controlplane, _server(ns, defaults=False), _connector(ns, "partner"))
    eventually(lambda: _ready(controlplane, "rcvc", "partner", ns), what="partner Ready")
    uid = get(controlplane, "rcvc", "partner", ns)["metadata"]["uid"]
    events = json.loads(
        controlplane.kubectl(
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.name=partner",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert events and all(e["involvedObject"]["uid"] == uid for e in events)

    def described() -> bool:
        out = controlplane.kubectl("describe", "rcvc", "partner", "-n", ns).stdout
        section = out.split("Events:", 1)[1]
        assert "<none>" not in section and "Serving" in section, section
        return True

    eventually(described, what="events in kubectl describe")


def test_an_edit_that_clashes_leaves_the_serving_connector_serving(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(
        controlplane, _server(ns, defaults=False), _connector(ns, "older", ranges="198.51.100.0/24")
    )
    eventually(lambda: _ready(controlplane, "rcvc", "older", ns), what="older Ready")
    time.sleep(1.1)  # creation timestamps have a resolution of one second
    apply(controlplane, _connector(ns, "newer", ranges="203.0.113.0/24"))
    eventually(lambda: _ready(controlplane, "rcvc", "newer", ns), what="newer Ready")
    apply(controlplane, _connector(ns, "older", ranges="203.0.113.0/24"))

    def older_refused() -> dict[str, Any]:
        cond = condition(get(controlplane, "rcvc", "older", ns), "Accepted")
        assert cond["status"] == "False" and cond["reason"] == "Conflict", cond
        return cond

    cond = eventually(older_refused, what="the edited connector refused")
    assert "'newer'" in cond["message"]
    assert condition(get(controlplane, "rcvc", "newer", ns), "Accepted")["status"] == "True"
    assert "newer" in {c["name"] for c in receiver_config(controlplane, ns)["connectors"]}
    time.sleep(6)  # and it stays that way across a resync
    assert "newer" in {c["name"] for c in receiver_config(controlplane, ns)["connectors"]}
    assert condition(get(controlplane, "rcvc", "older", ns), "Accepted")["reason"] == "Conflict"


def test_operator_serves_metrics(controlplane: Any, operator: Any, ns: str) -> None:
    apply(controlplane, _server(ns, defaults=False))
    eventually(lambda: get(controlplane, "configmap", "ex01-receiver", ns), what="ConfigMap")
    code, text = operator.http("/metrics")
    assert code == 200
    for name in (
        "smtpgate_operator_reconciles_total",
        "smtpgate_operator_reconcile_duration_seconds_bucket",
        "smtpgate_operator_queue_depth",
        "smtpgate_operator_writes_total",
        "smtpgate_operator_leader 1.0",
    ):
        assert name in text, name
    ok = [
        line
        for line in text.splitlines()
        if line.startswith('smtpgate_operator_reconciles_total{result="ok",scope="server"}')
    ]
    assert ok and float(ok[0].split()[-1]) >= 1
    assert operator.http("/healthz")[0] == 200 and operator.http("/readyz")[0] == 200


def test_json_logs_are_one_object_a_line(controlplane: Any, operator: Any, tmp_path: Any) -> None:
    from ..kube_helpers import Operator

    standby = Operator(
        controlplane.kubeconfig, tmp_path / "json.log", extra=["--log-format", "json"]
    )
    standby.start()
    try:
        eventually(lambda: "watching" in standby.output(), what="the first line")
        eventually(lambda: standby.http("/readyz")[0] == 200, what="caches synced")
    finally:
        standby.stop()
    entries = [json.loads(line) for line in standby.output().splitlines() if line.strip()]
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any(e["message"].startswith("watching all namespaces") for e in entries)


def test_a_burst_in_one_namespace_does_not_delay_another(
    controlplane: Any, operator: Any, ns: str
) -> None:
    other = f"op-{uuid.uuid4().hex[:8]}"
    controlplane.kubectl("create", "namespace", other)
    try:
        burst = [
            doc
            for i in range(30)
            for doc in (
                _server(ns, f"s{i:02d}", defaults=False),
                *(
                    _connector(ns, f"s{i:02d}-c{j}", f"s{i:02d}", ranges=f"198.18.{i}.{j * 16}/28")
                    for j in range(10)
                ),
            )
        ]
        applying = threading.Thread(target=apply, args=(controlplane, *burst))
        applying.start()
        eventually(
            lambda: get(controlplane, "configmap", "s00-receiver", ns), what="the burst under way"
        )
        started = time.monotonic()
        apply(controlplane, _server(other, "lonely", defaults=False))
        eventually(
            lambda: get(controlplane, "configmap", "lonely-receiver", other),
            timeout=30,
            what="the other namespace's ConfigMap",
        )
        waited = time.monotonic() - started
        applying.join()
        assert waited < 5, f"the other namespace waited {waited:.1f}s"

        def converged() -> bool:
            return all(
                len(receiver_config(controlplane, ns, f"s{i:02d}")["connectors"])
                == 11  # + delivery
                for i in range(30)
            )

        eventually(converged, timeout=90, what="the burst's ConfigMaps")
    finally:
        controlplane.kubectl("delete", "namespace", other, "--wait=false", check=False)
