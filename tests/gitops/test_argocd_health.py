"""Argo CD health checks (deploy/argocd/health.lua) run by a Lua 5.1 interpreter, as Argo CD
runs them: against status samples written here, against every Ready reason the operator
writes, and against statuses the real operator wrote."""

from __future__ import annotations

import ast
import copy
import json
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from ..kube_helpers import condition, eventually, get

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "deploy" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
KINDS = ("ReceiveConnector", "TransportServer", "AcceptedDomain", "TransportConfig")
Body = dict[str, Any]


def _lua(value: Any) -> str:
    """A JSON value as a Lua 5.1 table constructor (as Argo CD hands the object to Lua)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"[{_lua(k)}]={_lua(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ",".join(_lua(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).encode()
    return (
        '"'
        + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in text)
        + '"'
    )


def health(body: Body, script: str = SCRIPT) -> tuple[str, str]:
    """(status, message) as the script gives them for ``body``."""
    lua = shutil.which("lua5.1")
    assert lua, "lua5.1 not found: make test installs it (apt-get install lua5.1)"
    program = (
        f"obj = {_lua(body)}\n"
        f"local hs = assert(loadstring({_lua(script)}))()\n"
        'io.write(hs.status, "\\n", hs.message or "")\n'
    )
    done = subprocess.run(
        [lua, "-"], input=program, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    status, _, message = done.stdout.partition("\n")
    return status, message


def _cond(kind: str, ok: bool | str, reason: str, message: str = "", gen: int = 2) -> Body:
    status = ok if isinstance(ok, str) else ("True" if ok else "False")
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": gen,
    }


def _body(kind: str, *conditions: Body, observed: int | None = 2, status: bool = True) -> Body:
    body: Body = {
        "apiVersion": "smtpgate.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "mail", "generation": 2},
        "spec": {},
    }
    if status:
        body["status"] = {"conditions": list(conditions)}
        if observed is not None:
            body["status"]["observedGeneration"] = observed
    return body


RC, TS = "ReceiveConnector", "TransportServer"
SERVING = _cond("Ready", True, "Serving", "in ConfigMap mx01-receiver; 1/1 replicas ready")
VALID = _cond("Accepted", True, "Valid")
SAMPLES = [
    ("no status yet", _body(RC, status=False), "Progressing", "Waiting for the operator"),
    (
        "status for an older spec",
        _body(RC, VALID, SERVING, observed=1),
        "Progressing",
        "generation 2",
    ),
    (
        "Ready for an older spec",
        _body(RC, VALID, {**SERVING, "observedGeneration": 1}),
        "Progressing",
        "Ready condition of generation 2",
    ),
    ("serving", _body(RC, VALID, SERVING), "Healthy", "1/1 replicas ready"),
    (
        "serving, certificate chosen",
        _body(RC, VALID, _cond("CertificateReady", True, "Selected"), SERVING),
        "Healthy",
        "",
    ),
    (
        "serving without its certificate",
        _body(RC, VALID, _cond("CertificateReady", False, "SubjectNotFound", "no Secret"), SERVING),
        "Degraded",
        "CertificateReady False (SubjectNotFound): no Secret",
    ),
    (
        "server not serving yet",
        _body(RC, VALID, _cond("Ready", False, "ServerNotReady", "0/1 replicas ready")),
        "Progressing",
        "ServerNotReady",
    ),
    (
        "conflict",
        _body(
            RC,
            _cond("Accepted", False, "Conflict", "already used by connector 'a'"),
            _cond("Ready", False, "NotInConfig"),
        ),
        "Degraded",
        "Accepted False (Conflict): already used by connector 'a'",
    ),
    (
        "invalid spec",
        _body(RC, _cond("Accepted", False, "InvalidSpec"), _cond("Ready", False, "InvalidSpec")),
        "Degraded",
        "InvalidSpec",
    ),
    (
        "waiting for its server",
        _body(
            RC, _cond("Accepted", False, "ServerNotFound"), _cond("Ready", False, "ServerNotFound")
        ),
        "Progressing",
        "ServerNotFound",
    ),
    (
        "server invalid",
        _body(RC, VALID, _cond("Ready", False, "ServerInvalid")),
        "Degraded",
        "ServerInvalid",
    ),
    (
        "disabled",
        _body(RC, _cond("Accepted", True, "Disabled"), _cond("Ready", False, "NotInConfig")),
        "Suspended",
        "Disabled",
    ),
    ("server serving", _body(TS, SERVING), "Healthy", ""),
    (
        "server serving, a connector rejected",
        _body(TS, SERVING, _cond("ConnectorsRejected", True, "Rejected", "b")),
        "Healthy",
        "rejected: b",
    ),
    ("replicas starting", _body(TS, _cond("Ready", False, "ReplicasNotReady")), "Progressing", ""),
    ("workload pending", _body(TS, _cond("Ready", False, "WorkloadPending")), "Progressing", ""),
    ("rolling out", _body(TS, _cond("Ready", False, "Progressing")), "Progressing", ""),
    ("scaled to zero", _body(TS, _cond("Ready", False, "NoReplicas")), "Suspended", "NoReplicas"),
    (
        "apply failed",
        _body(TS, _cond("Ready", False, "ApplyFailed", "API answered 403")),
        "Degraded",
        "API answered 403",
    ),
    ("server invalid spec", _body(TS, _cond("Ready", False, "InvalidSpec")), "Degraded", ""),
    ("Ready Unknown", _body(TS, _cond("Ready", "Unknown", "Whatever")), "Progressing", ""),
    ("a reason not known here", _body(TS, _cond("Ready", False, "NewReason")), "Degraded", ""),
    ("domain accepted", _body("AcceptedDomain", _cond("Ready", True, "Accepted")), "Healthy", ""),
]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [pytest.param(b, s, m, id=i) for i, b, s, m in SAMPLES],
)
def test_health_of_status_samples(body: Body, status: str, message: str) -> None:
    got = health(body)
    assert got[0] == status and message in got[1], got


# Ready False reasons the operator writes, and the health each must give. A reason added to
# operator/reconcile.py fails test_every_reason_the_operator_writes_is_classified until it
# is listed here (and, when it is on its way or deliberate, in health.lua).
READY_FALSE = {
    "Progressing": "Progressing",
    "WorkloadPending": "Progressing",
    "ReplicasNotReady": "Progressing",
    "ServerNotReady": "Progressing",
    "ServerNotFound": "Progressing",
    "NoReplicas": "Suspended",
    "InvalidSpec": "Degraded",
    "ServerInvalid": "Degraded",
    "ApplyFailed": "Degraded",
    "NotInConfig": "Degraded",  # when Accepted does not say why first
    "Conflict": "Degraded",
    # operator/trust.py: a connector that cannot take any mail.
    "NobodyCanSubmit": "Degraded",
    "NoCertificate": "Degraded",
    # operator/spool.py: pods up but refusing new MAIL for their spool's sake.
    "SpoolFull": "Degraded",
    "SpoolUnwritable": "Degraded",
    # operator/secretrefs.py: a Secret or the krb5.conf ConfigMap the pods mount, or its key,
    # is missing.
    "SecretNotFound": "Degraded",
    "SecretKeyMissing": "Degraded",
    "ConfigMapNotFound": "Degraded",
    "ConfigMapKeyMissing": "Degraded",
}


def _reasons_written() -> set[str]:
    """Reasons in operator/reconcile.py: the third argument of condition(...), a reason
    variable's value (both branches of a choice); the reasons serving() returns
    (operator/readiness.py); and those of a missing Secret or ConfigMap
    (operator/secretrefs.py)."""
    from smtpgate.operator import secretrefs

    tree = ast.Module(
        body=[
            *ast.parse((ROOT / "operator" / "reconcile.py").read_text()).body,
            *ast.parse((ROOT / "operator" / "readiness.py").read_text()).body,
        ],
        type_ignores=[],
    )
    found: set[str] = set(secretrefs.REASONS)

    def take(node: ast.AST) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
        elif isinstance(node, ast.IfExp):
            take(node.body)
            take(node.orelse)

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "condition":
            take(node.args[2])
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "").startswith("reason") for t in node.targets
        ):
            take(node.value)  # a reason chosen before the call
        if isinstance(node, ast.FunctionDef) and node.name == "serving":
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Tuple):
                    take(ret.value.elts[1])
    return found


def test_every_reason_the_operator_writes_is_classified() -> None:
    written = _reasons_written()
    assert {"Serving", "ReplicasNotReady", "Conflict", "ApplyFailed"} <= written  # it reads them
    ok = {"Serving", "Accepted", "Valid", "Selected", "SelfSigned", "Rejected", "Disabled"}
    assert written - ok - set(READY_FALSE) == set()


@pytest.mark.parametrize(("reason", "expected"), sorted(READY_FALSE.items()))
def test_ready_false_reason_gives_its_health(reason: str, expected: str) -> None:
    assert health(_body(TS, _cond("Ready", False, reason)))[0] == expected


# operator/trust.py: the Ready condition of a TransportConfig (the namespace's oldest is used).
TRANSPORT_CONFIG = {"Resolved": "Healthy", "Duplicate": "Degraded", "InvalidSpec": "Degraded"}
TRANSPORT_CONFIG["InvalidReference"] = "Degraded"


def test_every_reason_a_transport_config_gets_is_classified() -> None:
    tree = ast.parse((ROOT / "operator" / "trust.py").read_text())
    written = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "resolve":
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "_cond":
                    reason = call.args[1]
                    assert isinstance(reason, ast.Constant), ast.dump(reason)
                    written.add(reason.value)
    assert written == set(TRANSPORT_CONFIG)


@pytest.mark.parametrize(("reason", "expected"), sorted(TRANSPORT_CONFIG.items()))
def test_transport_config_health_follows_its_ready_condition(reason: str, expected: str) -> None:
    ready = _cond("Ready", expected == "Healthy", reason, "as operator/trust.py words it")
    assert health(_body("TransportConfig", ready))[0] == expected


def test_argocd_cm_carries_the_script_for_each_kind() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen_argocd.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    data = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())["data"]
    assert sorted(data) == sorted(f"resource.customizations.health.smtpgate.io_{k}" for k in KINDS)
    for script in data.values():
        assert script == SCRIPT
        assert health(_body(RC, VALID, SERVING), script)[0] == "Healthy"


# -- statuses the real operator wrote --------------------------------------------------------
def _apply(controlplane: Any, namespace: str, *bodies: Body) -> None:
    for body in bodies:
        body = copy.deepcopy(body)
        body["metadata"]["namespace"] = namespace
        controlplane.kubectl("apply", "-f", "-", input=json.dumps(body))


def _server(name: str, **spec: Any) -> Body:
    return {
        "apiVersion": "smtpgate.io/v1alpha1",
        "kind": "TransportServer",
        "metadata": {"name": name},
        "spec": {"fqdn": f"{name}.contoso.com", "createDefaultConnectors": False, **spec},
    }


def _connector(name: str, **spec: Any) -> Body:
    return {
        "apiVersion": "smtpgate.io/v1alpha1",
        "kind": "ReceiveConnector",
        "metadata": {"name": name},
        # No TLS unless asked for: a TLS connector without a certificate is Degraded.
        "spec": {
            "usage": "Custom",
            "bindings": ["0.0.0.0:2525"],
            "authMechanisms": ["None"],
            # Someone may submit: a connector nobody can submit to is not Ready.
            "permissionGroups": ["AnonymousUsers"],
            **spec,
        },
    }


def _settled(controlplane: Any, kind: str, name: str, namespace: str, *reasons: str) -> Body:
    """The object once its Ready condition has one of ``reasons``, for its generation."""
    reason = " or ".join(reasons)

    def check() -> Body | None:
        body = get(controlplane, kind, name, namespace)
        ready = condition(body, "Ready")
        if (
            ready["reason"] in reasons
            and ready["observedGeneration"] == body["metadata"]["generation"]
        ):
            return body
        return None

    settled: Body = eventually(check, timeout=60, what=f"{kind}/{name} Ready reason {reason}")
    return settled


def test_health_of_what_the_operator_wrote(controlplane: Any, operator: Any, ns: str) -> None:
    _apply(
        controlplane,
        ns,
        _server("mx01"),
        _server("edge01", role="Edge"),
        _connector("relay", server="mx01", remoteIPRanges=["10.0.0.0/8"]),
        _connector("off", server="mx01", remoteIPRanges=["10.1.0.0/16"], enabled=False),
        _connector(
            "tls",
            server="mx01",
            bindings=["0.0.0.0:587"],
            remoteIPRanges=["0.0.0.0/0"],
            authMechanisms=["TLS"],
            tlsCertificateName="<I>CN=Nobody<S>CN=mx01.contoso.com",
        ),
        _connector("client-on-edge", server="edge01", usage="Client", authMechanisms=["TLS"]),
        _connector("lonely", server="nowhere", remoteIPRanges=["10.0.0.0/8"]),
    )
    _settled(controlplane, "receiveconnector", "relay", ns, "Serving")
    # Later, and so the one refused (oldest first).
    _apply(controlplane, ns, _connector("clash", server="mx01", remoteIPRanges=["10.0.0.0/8"]))
    cases = [
        ("transportserver", "mx01", "Serving", "Healthy"),
        ("receiveconnector", "relay", "Serving", "Healthy"),
        ("receiveconnector", "clash", "NotInConfig", "Degraded"),
        ("receiveconnector", "off", "NotInConfig", "Suspended"),
        ("receiveconnector", "tls", "Serving", "Degraded"),
        ("receiveconnector", "client-on-edge", "NotInConfig", "Degraded"),
        ("receiveconnector", "lonely", "ServerNotFound", "Progressing"),
    ]
    for kind, name, reason, expected in cases:
        body = _settled(controlplane, kind, name, ns, reason)
        assert health(body)[0] == expected, (name, health(body), body["status"])
    assert "Accepted False (Conflict)" in health(get(controlplane, "rcvc", "clash", ns))[1]
    refused = health(get(controlplane, "rcvc", "client-on-edge", ns))[1]
    assert "Accepted False (InvalidSpec): spec.usage" in refused
    # The same Ready object just after an edit, before the operator has looked at it.
    edited = get(controlplane, "rcvc", "relay", ns)
    edited["metadata"]["generation"] += 1
    assert health(edited)[0] == "Progressing"


def test_health_while_nothing_serves_is_progressing(
    controlplane: Any, operator: Any, nokubelet_ns: str
) -> None:
    _apply(
        controlplane,
        nokubelet_ns,
        _server("mx01"),
        _connector("relay", server="mx01", remoteIPRanges=["10.0.0.0/8"]),
    )
    server = _settled(
        controlplane, "transportserver", "mx01", nokubelet_ns, "Progressing", "ReplicasNotReady"
    )
    assert health(server)[0] == "Progressing"
    connector = _settled(controlplane, "receiveconnector", "relay", nokubelet_ns, "ServerNotReady")
    assert health(connector)[0] == "Progressing"
