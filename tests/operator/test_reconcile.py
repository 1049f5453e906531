"""The operator against the real kube-apiserver: children, edits, conflicts, GC, restarts."""

from __future__ import annotations

import json
import time
from typing import Any

from ..kube_helpers import apply, condition, eventually, get, receiver_config

SERVER = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: {name}, namespace: {ns}}}
spec:
  fqdn: mail.contoso.com
  exposure: {{type: LoadBalancer}}
"""
DOMAIN = """
apiVersion: smtpgate.io/v1alpha1
kind: AcceptedDomain
metadata: {{name: contoso, namespace: {ns}}}
spec: {{domainName: contoso.com}}
"""
PARTNER = """
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {{name: {name}, namespace: {ns}}}
spec:
  server: {server}
  usage: Internet  # anonymous senders: a Partner connector would need domain security
  bindings: ["192.0.2.10:25"]
  remoteIPRanges: [{ranges}]
  maxMessageSize: {size}
"""


def test_server_gets_its_defaults_config_workload_and_services(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(controlplane, SERVER.format(name="ex01", ns=ns) + "---" + DOMAIN.format(ns=ns))
    names = {
        "client-frontend-ex01",
        "default-frontend-ex01",
        "outbound-proxy-frontend-ex01",
        "client-proxy-ex01",
        "default-ex01",
    }

    def defaults_ready() -> bool:
        items = json.loads(controlplane.kubectl("get", "rcvc", "-n", ns, "-o", "json").stdout)[
            "items"
        ]
        assert {i["metadata"]["name"] for i in items} == names
        assert all(condition(i, "Ready")["status"] == "True" for i in items)
        assert all(i["metadata"]["ownerReferences"][0]["kind"] == "TransportServer" for i in items)
        return True

    eventually(defaults_ready, what="default connectors Ready")
    config = receiver_config(controlplane, ns)
    assert {c["name"] for c in config["connectors"]} == names | {
        "mailbox-delivery-receive-connector-ex01"
    }
    assert config["acceptedDomains"] == [{"domain": "contoso.com", "domainType": "Authoritative"}]
    workload = get(controlplane, "statefulset", "ex01-receiver", ns)
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == {25, 465, 475, 587, 717, 2525, 8080}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert "smtpgate.io/mounts-hash" in workload["spec"]["template"]["metadata"]["annotations"]
    assert workload["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "smtpgate-operator"
    service = get(controlplane, "service", "ex01-receiver", ns)
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert {p["port"] for p in service["spec"]["ports"]} == {25, 465, 475, 587, 717, 2525}
    server = eventually(
        lambda: (s := get(controlplane, "tsrv", "ex01", ns))["status"].get("connectors") == 5 and s
    )
    assert condition(server, "Ready")["status"] == "True"
    assert server["status"]["configHash"]


def test_specific_binding_gets_its_own_port_and_service(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(
        controlplane,
        SERVER.format(name="ex01", ns=ns)
        + "---"
        + PARTNER.format(
            name="partner", ns=ns, server="ex01", ranges="198.51.100.0/24", size="50MB"
        ),
    )
    service = eventually(
        lambda: get(controlplane, "service", "ex01-receiver-192-0-2-10", ns), what="Service"
    )
    assert service["spec"]["loadBalancerIP"] == "192.0.2.10"
    assert service["spec"]["ports"][0]["port"] == 25
    target = service["spec"]["ports"][0]["targetPort"]
    assert target >= 10025
    args = get(controlplane, "statefulset", "ex01-receiver", ns)["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert f"192.0.2.10:25=0.0.0.0:{target}" in args


def test_edit_reaches_the_config_and_nothing_else_churns(
    controlplane: Any, operator: Any, ns: str
) -> None:
    manifests = (
        SERVER.format(name="ex01", ns=ns)
        + "---"
        + DOMAIN.format(ns=ns)
        + "---"
        + PARTNER.format(
            name="partner", ns=ns, server="ex01", ranges="198.51.100.0/24", size="50MB"
        )
    )
    apply(controlplane, manifests)
    eventually(
        lambda: any(c["name"] == "partner" for c in receiver_config(controlplane, ns)["connectors"])
    )
    eventually(
        lambda: condition(get(controlplane, "rcvc", "partner", ns), "Ready")["status"] == "True"
    )

    def versions() -> dict[str, str]:
        return {
            f"{kind}/{name}": get(controlplane, kind, name, ns)["metadata"]["resourceVersion"]
            for kind, name in (
                ("configmap", "ex01-receiver"),
                ("statefulset", "ex01-receiver"),
                ("service", "ex01-receiver"),
                ("rcvc", "partner"),
                ("rcvc", "default-ex01"),
            )
        }

    time.sleep(6)  # past one resync
    before = versions()
    apply(controlplane, manifests)
    time.sleep(6)
    assert versions() == before, "re-applying the same manifests must change nothing"

    edited = manifests.replace("maxMessageSize: 50MB", "maxMessageSize: 70MB")
    apply(controlplane, edited)

    def size_followed() -> bool:
        partner = next(
            c for c in receiver_config(controlplane, ns)["connectors"] if c["name"] == "partner"
        )
        return partner["limits"]["maxMessageSize"] == 70 * 1024 * 1024

    eventually(size_followed, what="ConfigMap to follow the edit")
    time.sleep(3)
    after = versions()
    assert after["configmap/ex01-receiver"] != before["configmap/ex01-receiver"]
    assert after["rcvc/partner"] != before["rcvc/partner"]  # the edited connector itself
    for unchanged in ("statefulset/ex01-receiver", "service/ex01-receiver", "rcvc/default-ex01"):
        assert after[unchanged] == before[unchanged], unchanged
    partner = json.loads(
        controlplane.kubectl(
            "get", "rcvc", "partner", "-n", ns, "-o", "json", "--show-managed-fields"
        ).stdout
    )
    managers = {
        m["manager"]
        for m in partner["metadata"]["managedFields"]
        if m.get("subresource") != "status"
    }
    assert not any("smtpgate" in m for m in managers), "the operator never writes a user's spec"


def test_conflicting_connector_is_not_accepted_and_names_the_other(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(
        controlplane,
        SERVER.format(name="ex01", ns=ns)
        + "---"
        + PARTNER.format(name="first", ns=ns, server="ex01", ranges="198.51.100.0/24", size="10MB"),
    )
    eventually(
        lambda: condition(get(controlplane, "rcvc", "first", ns), "Ready")["status"] == "True"
    )
    apply(
        controlplane,
        PARTNER.format(
            name="second", ns=ns, server="ex01", ranges="198.51.100.0/25", size="10MB"
        ).replace("198.51.100.0/25", "198.51.100.128-198.51.101.10"),
    )

    def rejected() -> dict[str, Any]:
        cond = condition(get(controlplane, "rcvc", "second", ns), "Accepted")
        assert cond["status"] == "False"
        return cond

    cond = eventually(rejected, what="Accepted=False")
    assert cond["reason"] == "Conflict" and "'first'" in cond["message"]
    assert condition(get(controlplane, "rcvc", "second", ns), "Ready")["status"] == "False"
    assert condition(get(controlplane, "rcvc", "first", ns), "Accepted")["status"] == "True"
    assert "second" not in {c["name"] for c in receiver_config(controlplane, ns)["connectors"]}
    events = controlplane.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=second", "-o", "json"
    ).stdout
    assert "Conflict" in events


def test_connector_waits_for_its_server(controlplane: Any, operator: Any, ns: str) -> None:
    apply(
        controlplane,
        PARTNER.format(name="early", ns=ns, server="later", ranges="198.51.100.7", size="10MB"),
    )
    cond = eventually(lambda: condition(get(controlplane, "rcvc", "early", ns), "Accepted"))
    assert (
        cond["status"] == "False"
        and cond["reason"] == "ServerNotFound"
        and "'later'" in cond["message"]
    )
    apply(controlplane, SERVER.format(name="later", ns=ns))
    eventually(
        lambda: condition(get(controlplane, "rcvc", "early", ns), "Ready")["status"] == "True"
    )
    assert "early" in {c["name"] for c in receiver_config(controlplane, ns, "later")["connectors"]}


def test_invalid_connector_gets_a_condition_naming_the_field(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(
        controlplane,
        SERVER.format(name="ex01", ns=ns)
        + "---"
        + """
apiVersion: smtpgate.io/v1alpha1
kind: ReceiveConnector
metadata: {name: broken, namespace: NS}
spec:
  server: ex01
  usage: Custom
  bindings: ["0.0.0.0:2526"]
  remoteIPRanges: ["10.0.0.0/8"]
  connectionTimeoutSeconds: 200
""".replace("NS", ns),
    )
    # Admitted (on an Edge server the default inactivity of 60 s would be shorter), but a
    # Mailbox server's is 300 s: the operator says why.
    cond = eventually(lambda: condition(get(controlplane, "rcvc", "broken", ns), "Accepted"))
    assert cond["status"] == "False" and cond["reason"] == "InvalidSpec"
    assert "spec.connectionInactivityTimeoutSeconds" in cond["message"]
    assert "(300 >= 200)" in cond["message"]


def test_deleting_the_server_collects_its_children(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(controlplane, SERVER.format(name="ex01", ns=ns))
    eventually(lambda: get(controlplane, "statefulset", "ex01-receiver", ns))
    controlplane.kubectl("delete", "tsrv", "ex01", "-n", ns)

    def gone() -> bool:
        left = controlplane.kubectl(
            "get",
            "configmap,statefulset,service,rcvc",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/managed-by=smtpgate-operator",
            "-o",
            "name",
        ).stdout
        assert left.strip() == "", left
        return True

    eventually(gone, timeout=60, what="garbage collection")


def test_operator_restart_converges_without_duplicates(
    controlplane: Any, operator: Any, ns: str
) -> None:
    operator.stop()
    try:
        apply(controlplane, SERVER.format(name="ex01", ns=ns) + "---" + DOMAIN.format(ns=ns))
        operator.start()
        eventually(lambda: len(receiver_config(controlplane, ns)["connectors"]) == 6)
        operator.stop()
        apply(
            controlplane,
            PARTNER.format(
                name="partner", ns=ns, server="ex01", ranges="198.51.100.0/24", size="10MB"
            ),
        )
    finally:
        operator.start()
    eventually(lambda: len(receiver_config(controlplane, ns)["connectors"]) == 7)
    connectors = controlplane.kubectl("get", "rcvc", "-n", ns, "-o", "name").stdout.split()
    assert len(connectors) == len(set(connectors)) == 6
    expected = {
        "configmap": ["configmap/ex01-receiver"],
        "statefulset": ["statefulset.apps/ex01-receiver"],
        "service": [
            "service/ex01-receiver",
            "service/ex01-receiver-192-0-2-10",
            "service/ex01-receiver-metrics",
        ],
        "poddisruptionbudget": ["poddisruptionbudget.policy/ex01-receiver"],
    }
    for kind, names in expected.items():
        found = controlplane.kubectl(
            "get", kind, "-n", ns, "-l", "app.kubernetes.io/instance=ex01", "-o", "name"
        ).stdout.split()
        assert sorted(found) == names


def test_operator_converges_after_the_api_server_was_away(
    controlplane: Any, operator: Any, ns: str
) -> None:
    manifests = (
        SERVER.format(name="ex01", ns=ns)
        + "---"
        + PARTNER.format(
            name="partner", ns=ns, server="ex01", ranges="198.51.100.0/24", size="10MB"
        )
    )
    apply(controlplane, manifests)
    eventually(
        lambda: any(c["name"] == "partner" for c in receiver_config(controlplane, ns)["connectors"])
    )
    apply(controlplane, manifests.replace("10MB", "20MB"))
    controlplane.plane.pause("kube-apiserver", 8)
    assert operator.proc is not None and operator.proc.poll() is None, "the operator survives"

    def followed() -> bool:
        partner = next(
            c for c in receiver_config(controlplane, ns)["connectors"] if c["name"] == "partner"
        )
        return partner["limits"]["maxMessageSize"] == 20 * 1024 * 1024

    eventually(followed, timeout=60, what="the edit made before the outage")


def test_a_second_operator_replica_waits_for_the_lease(
    controlplane: Any, operator: Any, tmp_path: Any
) -> None:
    from ..kube_helpers import Operator

    eventually(lambda: "leading as" in operator.output(), what="the first replica to lead")
    second = Operator(controlplane.kubeconfig, tmp_path / "second.log")
    second.start()
    try:
        time.sleep(8)
        assert second.proc is not None and second.proc.poll() is None
        assert "leading as" not in second.output(), "only one replica may act at a time"
        holder = get(controlplane, "lease", "smtpgate-operator", "default")["spec"][
            "holderIdentity"
        ]
        assert holder and holder in operator.output()
    finally:
        second.stop()


def test_a_new_accepted_domain_reaches_every_serverreceiver_config(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(controlplane, SERVER.format(name="ex01", ns=ns) + "---" + DOMAIN.format(ns=ns))
    eventually(lambda: receiver_config(controlplane, ns)["acceptedDomains"])
    apply(
        controlplane,
        f"""
apiVersion: smtpgate.io/v1alpha1
kind: AcceptedDomain
metadata: {{name: fabrikam, namespace: {ns}}}
spec: {{domainName: "*.fabrikam.com", domainType: InternalRelay}}
""",
    )
    eventually(
        lambda: (
            {d["domain"] for d in receiver_config(controlplane, ns)["acceptedDomains"]}
            == {"contoso.com", "*.fabrikam.com"}
        ),
        what="the new accepted domain in the ConfigMap",
    )
    assert (
        condition(get(controlplane, "accepteddomain", "fabrikam", ns), "Ready")["status"] == "True"
    )
