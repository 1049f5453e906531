"""The krb5.conf ConfigMap a TransportServer's receiver pods mount
(``spec.kerberos.krb5ConfigMapRef``), against the real kube-apiserver: a missing ConfigMap or
key is named in the server's and its Kerberos connectors' conditions instead of only in a pod
stuck in ContainerCreating; creating it clears them within seconds, from the watch;
deleting it under a serving server leaves that server's workload as it is."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from smtpgate.operator import secretrefs
from smtpgate.operator.workqueue import WorkQueue

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
  fqdn: ex01.contoso.com
  createDefaultConnectors: false
  kerberos:
    realm: CONTOSO.COM
    servicePrincipals: [SMTP/ex01.contoso.com]
    keytabSecretRef: {{name: ex01-keytab, key: krb5.keytab}}
    krb5ConfigMapRef: {{name: krb5, key: krb5.conf}}
  ntlm:
    hashesSecretRef: {{name: ex01-ntlm, key: ntlm}}
---
apiVersion: v1
kind: Secret
metadata: {{name: ex01-keytab, namespace: {ns}}}
stringData: {{krb5.keytab: a keytab}}
---
apiVersion: v1
kind: Secret
metadata: {{name: ex01-ntlm, namespace: {ns}}}
stringData: {{ntlm: "alice:00000000000000000000000000000000"}}
---
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: integrated, namespace: {ns}}}
spec:
  server: ex01
  usage: Custom
  bindings: ["0.0.0.0:2525"]
  remoteIPRanges: ["10.0.0.0/8"]
  authMechanisms: [Integrated]
  permissionGroups: [ExchangeUsers]
"""
EXCHANGE = """
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: servers, namespace: {ns}}}
spec:
  server: ex01
  usage: Internal
  bindings: ["0.0.0.0:2526"]
  remoteIPRanges: ["10.1.0.0/16"]
---
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: inbound, namespace: {ns}}}
spec:
  server: ex01
  usage: Internet
  bindings: ["0.0.0.0:25"]
"""
KRB5_CONF = "[libdefaults]\n  default_realm = CONTOSO.COM\n"


def _config_map(controlplane: Any, ns: str, **data: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "krb5", "namespace": ns},
        "data": data,
    }
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(body))


def _cond(controlplane: Any, kind: str, name: str, ns: str, type_: str) -> dict[str, Any]:
    return condition(get(controlplane, kind, name, ns), type_)


def _is(cond: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    assert (cond["status"], cond["reason"]) == (status, reason), cond
    return cond


def test_a_missing_krb5_config_map_is_named_in_the_conditions_and_the_pods_wait_for_it(
    controlplane: Any, operator: Any, nokubelet_ns: str
) -> None:
    ns = nokubelet_ns
    apply(controlplane, SERVER.format(ns=ns), EXCHANGE.format(ns=ns))

    maps = eventually(
        lambda: _is(
            _cond(controlplane, "tsrv", "ex01", ns, "ConfigMapsReady"), "False", "ConfigMapNotFound"
        ),
        what="ConfigMapsReady False",
    )
    assert maps["message"] == (
        f"ConfigMap {ns}/krb5 (spec.kerberos.krb5ConfigMapRef, the krb5.conf, key 'krb5.conf') "
        "does not exist"
    )
    # The keytab Secret is there: SecretsReady says so, the ConfigMap is what is missing.
    _is(_cond(controlplane, "tsrv", "ex01", ns, "SecretsReady"), "True", "Found")
    ready = _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "False", "ConfigMapNotFound")
    assert f"ConfigMap {ns}/krb5" in ready["message"]
    assert "cannot start until it exists" in ready["message"]
    # Never had it: the workload is written as the spec says, its pods mounting the
    # ConfigMap, so that they start when the kubelet finds it.
    pod = get(controlplane, "statefulset", "ex01-receiver", ns)["spec"]["template"]["spec"]
    krb5 = next(v for v in pod["volumes"] if v["name"] == "krb5")
    assert krb5["configMap"]["name"] == "krb5"

    # Integrated (Internal connectors offer ExchangeServer too) needs krb5.conf and says so;
    # the anonymous connector waits on its server, whose message names the ConfigMap.
    for name, mechanism in (("integrated", "Integrated"), ("servers", "ExchangeServer")):
        credentials = eventually(
            lambda name=name: _is(
                _cond(controlplane, "rcvc", name, ns, "CredentialsReady"),
                "False",
                "ConfigMapNotFound",
            ),
            what=f"{name}'s CredentialsReady",
        )
        assert f"{mechanism} cannot authenticate" in credentials["message"]
        assert f"ConfigMap {ns}/krb5 (spec.kerberos.krb5ConfigMapRef" in credentials["message"]
        _is(_cond(controlplane, "rcvc", name, ns, "Ready"), "False", "ConfigMapNotFound")
    inbound = _is(_cond(controlplane, "rcvc", "inbound", ns, "Ready"), "False", "ServerNotReady")
    assert f"ConfigMap {ns}/krb5" in inbound["message"]
    events = controlplane.kubectl(
        "get", "events", "-n", ns, "--field-selector", "reason=ConfigMapNotFound", "-o", "json"
    )
    assert json.loads(events.stdout)["items"], "a Warning Event with the reason"

    # The ConfigMap without the named key: named, with the keys it has.
    _config_map(controlplane, ns, **{"krb5.ini": KRB5_CONF})
    maps = eventually(
        lambda: _is(
            _cond(controlplane, "tsrv", "ex01", ns, "ConfigMapsReady"),
            "False",
            "ConfigMapKeyMissing",
        ),
        timeout=10,
        what="ConfigMapsReady False for the key",
    )
    assert "has no key 'krb5.conf' (its keys: krb5.ini)" in maps["message"]
    _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "False", "ConfigMapKeyMissing")
    eventually(
        lambda: _is(
            _cond(controlplane, "rcvc", "integrated", ns, "CredentialsReady"),
            "False",
            "ConfigMapKeyMissing",
        ),
        timeout=10,
        what="the Integrated connector's CredentialsReady",
    )


def test_creating_the_missing_krb5_config_map_clears_the_conditions_within_a_second(
    controlplane: Any, operator: Any, ns: str, tmp_path: pathlib.Path
) -> None:
    """With no resync for an hour, only the ConfigMap's watch event can bring the change."""
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
        apply(controlplane, SERVER.format(ns=ns))
        eventually(
            lambda: _is(
                _cond(controlplane, "rcvc", "integrated", ns, "CredentialsReady"),
                "False",
                "ConfigMapNotFound",
            ),
            what="the connector's CredentialsReady",
        )
        _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "False", "ConfigMapNotFound")

        time.sleep(3)  # the reconciles the new objects' own status writes set off: done
        _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "False", "ConfigMapNotFound")
        started = time.monotonic()
        _config_map(controlplane, ns, **{"krb5.conf": KRB5_CONF})  # nothing else changes
        eventually(
            lambda: _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "True", "Serving"),
            timeout=10,
            what="Ready True once the ConfigMap exists",
        )
        elapsed = time.monotonic() - started
        print(f"krb5.conf ConfigMap created -> Ready True in {elapsed:.1f}s")
        # From the watch, not a resync (an hour here): within the work queue's longest wait
        # for a key (a burst of events moves it later, up to max_delay) and a reconcile.
        bound = WorkQueue().max_delay + 3
        assert elapsed < bound, f"{elapsed:.1f}s: from the watch, within {bound:.0f} s"
        found = _is(_cond(controlplane, "tsrv", "ex01", ns, "ConfigMapsReady"), "True", "Found")
        assert "krb5[krb5.conf]" in found["message"]
        credentials = eventually(
            lambda: _is(
                _cond(controlplane, "rcvc", "integrated", ns, "CredentialsReady"),
                "True",
                "Configured",
            ),
            timeout=5,
            what="the connector's CredentialsReady",
        )
        assert "ConfigMap krb5[krb5.conf]" in credentials["message"]
        _is(_cond(controlplane, "rcvc", "integrated", ns, "Ready"), "True", "Serving")
    finally:
        watching.stop()
        operator.start()


def test_a_krb5_config_map_deleted_under_a_serving_server_leaves_its_workload_as_it_is(
    controlplane: Any, operator: Any, ns: str
) -> None:
    _config_map(controlplane, ns, **{"krb5.conf": KRB5_CONF})
    apply(controlplane, SERVER.format(ns=ns))
    eventually(
        lambda: _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "True", "Serving"),
        what="serving",
    )
    before = get(controlplane, "statefulset", "ex01-receiver", ns)

    controlplane.kubectl("delete", "configmap", "krb5", "-n", ns)
    ready = eventually(
        lambda: _is(_cond(controlplane, "tsrv", "ex01", ns, "Ready"), "False", "ConfigMapNotFound"),
        timeout=10,
        what="Ready False once the ConfigMap is gone",
    )
    assert "keep serving with the copy they mounted" in ready["message"]
    assert "held as it is until the ConfigMap is back" in ready["message"]

    # An edit that changes the pod template, while the ConfigMap is missing: the serving
    # workload is neither rolled nor deleted.
    edit_while_held(controlplane, ns, "ConfigMapNotFound", before)

    # The ConfigMap back: the edit that waited reaches the workload, Ready again.
    _config_map(controlplane, ns, **{"krb5.conf": KRB5_CONF})
    held_edit_applied(controlplane, ns)


def test_the_key_name_cache_keeps_no_config_map_values() -> None:
    slim = secretrefs.slim(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "krb5", "namespace": "n", "resourceVersion": "7"},
            "data": {"krb5.conf": "[realms] CONTOSO.COM = { kdc = kdc.contoso.com }"},
            "binaryData": {"ca.der": "MAo="},
        }
    )
    assert slim["kind"] == "ConfigMap" and slim["keys"] == ["ca.der", "krb5.conf"]
    assert "data" not in slim and "binaryData" not in slim
    assert "kdc.contoso.com" not in json.dumps(slim) and "MAo=" not in json.dumps(slim)
