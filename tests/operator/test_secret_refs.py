"""The Secrets a TransportServer's receiver pods mount, against the real kube-apiserver: a
missing Secret or key is named in the server's and its connectors' conditions instead of
only in a pod stuck in ContainerCreating; creating it clears them within seconds, from the
watch; deleting it under a serving server leaves that server's workload as it is."""

from __future__ import annotations

import base64
import json
import pathlib
import time
from typing import Any

from smtpgate.operator import secretrefs

from ..kube_helpers import (
    Operator,
    apply,
    condition,
    edit_while_held,
    eventually,
    get,
    held_edit_applied,
)

SERVER = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec:
  fqdn: mail.contoso.com
  createDefaultConnectors: false
  userDatabaseSecretRef: {{name: smtp-users, key: auth}}
"""
SUBMISSION = """
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: submission, namespace: {ns}}}
spec:
  server: ex01
  usage: Client
  bindings: ["0.0.0.0:587"]
  authMechanisms: [TLS, BasicAuth, BasicAuthRequireTLS]
"""
ANONYMOUS = """
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: inbound, namespace: {ns}}}
spec:
  server: ex01
  usage: Internet
  bindings: ["0.0.0.0:25"]
"""
INTEGRATED = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex02, namespace: {ns}}}
spec:
  fqdn: ex02.contoso.com
  createDefaultConnectors: false
  kerberos:
    realm: CONTOSO.COM
    servicePrincipals: [SMTP/ex02.contoso.com]
    keytabSecretRef: {{name: ex02-keytab, key: krb5.keytab}}
  ntlm:
    hashesSecretRef: {{name: ex02-ntlm, key: ntlm}}
---
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: integrated, namespace: {ns}}}
spec:
  server: ex02
  usage: Custom
  bindings: ["0.0.0.0:2525"]
  remoteIPRanges: ["10.0.0.0/8"]
  authMechanisms: [Integrated]
  permissionGroups: [ExchangeUsers]
"""
USERS = "alice:$2b$10$AGM9wjfOn7esKDBlpwFnVO6kuFwwoL28Jy960YR7sMPNQBr0wt3tW\n"


def _secret(controlplane: Any, ns: str, name: str, **data: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(body))


def _cond(controlplane: Any, kind: str, name: str, ns: str, type_: str) -> dict[str, Any]:
    return condition(get(controlplane, kind, name, ns), type_)


def _is(cond: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    assert (cond["status"], cond["reason"]) == (status, reason), cond
    return cond


def test_a_missing_user_database_secret_is_named_in_the_conditions_and_the_pods_wait_for_it(
    controlplane: Any, operator: Any, nokubelet_ns: str
) -> None:
    ns = nokubelet_ns
    apply(controlplane, SERVER.format(ns=ns), SUBMISSION.format(ns=ns), ANONYMOUS.format(ns=ns))

    secrets = eventually(
        lambda: _is(
            _cond(controlplane, "tsrv", "ex01", ns, "SecretsReady"), "False", "SecretNotFound"
        ),
        what="SecretsReady False",
    )
    assert f"Secret {ns}/smtp-users" in secrets["message"]
    assert (
        "spec.userDatabaseSecretRef" in secrets["message"]
        and "does not exist" in secrets["message"]
    )
    ready = _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "False", "SecretNotFound")
    assert f"Secret {ns}/smtp-users" in ready["message"]
    assert "cannot start until it exists" in ready["message"]
    # Never had the Secret: the workload is written as the spec says, its pods mounting
    # the Secret, so that they start when the kubelet finds it.
    pod = get(controlplane, "statefulset", "ex01-receiver", ns)["spec"]["template"]["spec"]
    users = next(v for v in pod["volumes"] if v["name"] == "users")
    assert users["secret"]["secretName"] == "smtp-users"
    # The connector whose BasicAuth needs the users says so; the anonymous one waits on
    # its server, whose message names the Secret.
    credentials = eventually(
        lambda: _is(
            _cond(controlplane, "rcvc", "submission", ns, "CredentialsReady"),
            "False",
            "SecretNotFound",
        ),
        what="the BasicAuth connector's CredentialsReady",
    )
    assert "BasicAuth" in credentials["message"] and f"{ns}/smtp-users" in credentials["message"]
    _is(_cond(controlplane, "rcvc", "submission", ns, "Ready"), "False", "SecretNotFound")
    inbound = _is(_cond(controlplane, "rcvc", "inbound", ns, "Ready"), "False", "ServerNotReady")
    assert f"{ns}/smtp-users" in inbound["message"]
    assert "CredentialsReady" not in {
        c["type"] for c in get(controlplane, "rcvc", "inbound", ns)["status"]["conditions"]
    }
    events = controlplane.kubectl(
        "get", "events", "-n", ns, "--field-selector", "reason=SecretNotFound", "-o", "json"
    )
    assert json.loads(events.stdout)["items"], "a Warning Event with the reason"


def test_a_secret_without_the_named_key_is_named_with_the_keys_it_has(
    controlplane: Any, operator: Any, nokubelet_ns: str
) -> None:
    ns = nokubelet_ns
    _secret(controlplane, ns, "smtp-users", users=USERS)
    _secret(controlplane, ns, "ex02-keytab", keytab="not the named key")
    apply(controlplane, SERVER.format(ns=ns), SUBMISSION.format(ns=ns), INTEGRATED.format(ns=ns))

    secrets = eventually(
        lambda: _is(
            _cond(controlplane, "tsrv", "ex01", ns, "SecretsReady"), "False", "SecretKeyMissing"
        ),
        what="SecretsReady False for the key",
    )
    assert f"Secret {ns}/smtp-users" in secrets["message"]
    assert "has no key 'auth' (its keys: users)" in secrets["message"]
    _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "False", "SecretKeyMissing")
    eventually(
        lambda: _is(
            _cond(controlplane, "rcvc", "submission", ns, "CredentialsReady"),
            "False",
            "SecretKeyMissing",
        ),
        what="the BasicAuth connector's CredentialsReady",
    )

    # Kerberos and NTLM: the keytab Secret lacks its key, the NT hash Secret is not there;
    # both are named, on the server and on the connector whose Integrated needs them.
    both = eventually(
        lambda: _is(
            _cond(controlplane, "tsrv", "ex02", ns, "SecretsReady"), "False", "SecretKeyMissing"
        ),
        what="ex02's SecretsReady",
    )
    assert f"Secret {ns}/ex02-keytab (spec.kerberos.keytabSecretRef" in both["message"]
    assert "has no key 'krb5.keytab' (its keys: keytab)" in both["message"]
    assert f"Secret {ns}/ex02-ntlm (spec.ntlm.hashesSecretRef" in both["message"]
    credentials = eventually(
        lambda: _is(
            _cond(controlplane, "rcvc", "integrated", ns, "CredentialsReady"),
            "False",
            "SecretKeyMissing",
        ),
        what="the Integrated connector's CredentialsReady",
    )
    assert "Integrated cannot authenticate" in credentials["message"]
    assert "ex02-keytab" in credentials["message"] and "ex02-ntlm" in credentials["message"]


def test_creating_the_missing_secret_clears_the_conditions_within_seconds(
    controlplane: Any, operator: Any, ns: str, tmp_path: pathlib.Path
) -> None:
    """With no resync for an hour, only the Secret's watch event can bring the change."""
    watching = Operator(
        controlplane.kubeconfig,
        tmp_path / "watching.log",
        lease_namespace=ns,
        namespaces=[ns],
        resync="3600",
    )
    operator.stop()  # one operator at a time: this one never resyncs
    try:
        watching.start()
        apply(controlplane, SERVER.format(ns=ns), SUBMISSION.format(ns=ns))
        eventually(
            lambda: _is(
                _cond(controlplane, "tsrv", "ex01", ns, "Ready"), "False", "SecretNotFound"
            ),
            what="Ready False for the Secret",
        )
        eventually(
            lambda: _is(
                _cond(controlplane, "rcvc", "submission", ns, "CredentialsReady"),
                "False",
                "SecretNotFound",
            ),
            what="the connector's CredentialsReady",
        )

        time.sleep(3)  # the reconciles the new objects' own status writes set off: done
        started = time.monotonic()
        _secret(controlplane, ns, "smtp-users", auth=USERS)  # nothing else changes
        eventually(
            lambda: _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "True", "Serving"),
            timeout=10,
            what="Ready True once the Secret exists",
        )
        elapsed = time.monotonic() - started
        print(f"Secret created -> Ready True in {elapsed:.1f}s")
        found = _is(_cond(controlplane, "tsrv", "ex01", ns, "SecretsReady"), "True", "Found")
        assert "smtp-users[auth]" in found["message"]
        eventually(
            lambda: _is(
                _cond(controlplane, "rcvc", "submission", ns, "CredentialsReady"),
                "True",
                "Configured",
            ),
            timeout=5,
            what="the connector's CredentialsReady",
        )
        _is(_cond(controlplane, "rcvc", "submission", ns, "Ready"), "True", "Serving")
    finally:
        watching.stop()
        operator.start()


def test_a_secret_deleted_under_a_serving_server_leaves_its_workload_as_it_is(
    controlplane: Any, operator: Any, ns: str
) -> None:
    _secret(controlplane, ns, "smtp-users", auth=USERS)
    apply(controlplane, SERVER.format(ns=ns), SUBMISSION.format(ns=ns))
    eventually(
        lambda: _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "True", "Serving"),
        what="serving",
    )
    before = get(controlplane, "statefulset", "ex01-receiver", ns)

    controlplane.kubectl("delete", "secret", "smtp-users", "-n", ns)
    ready = eventually(
        lambda: _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "False", "SecretNotFound"),
        timeout=10,
        what="Ready False once the Secret is gone",
    )
    assert "keep serving with the copy they mounted" in ready["message"]
    assert "held as it is" in ready["message"]

    # An edit that changes the pod template, while the Secret is missing: the serving
    # workload is neither rolled nor deleted.
    edit_while_held(controlplane, ns, "SecretNotFound", before)

    # The key removed instead: still held, the condition says which key.
    _secret(controlplane, ns, "smtp-users", other=USERS)
    eventually(
        lambda: _is(
            _cond(controlplane, "tsrv", "ex01", ns, "SecretsReady"), "False", "SecretKeyMissing"
        ),
        timeout=10,
        what="SecretKeyMissing",
    )
    time.sleep(2)
    held = get(controlplane, "statefulset", "ex01-receiver", ns)
    assert held["spec"]["template"] == before["spec"]["template"]

    # The Secret back as it was: the edit that waited reaches the workload, Ready again.
    _secret(controlplane, ns, "smtp-users", auth=USERS)
    held_edit_applied(controlplane, ns)


def test_the_key_name_cache_keeps_no_secret_values() -> None:
    slim = secretrefs.slim(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "s", "namespace": "n", "resourceVersion": "7", "labels": {}},
            "data": {"auth": base64.b64encode(b"alice:hash").decode()},
        }
    )
    assert slim["keys"] == ["auth"]
    assert "data" not in slim and "hash" not in json.dumps(slim)
    assert secretrefs.key_names(slim) == {"auth"}
