"""Kerberos and NTLM from Kubernetes objects, against the real kube-apiserver: the keytab,
krb5.conf and NT hashes a TransportServer names reach its receivers' pods and config; the
organisation's other servers are known by their service principals; a connector whose
Integrated or ExchangeServer lacks its server's credentials says so in a condition."""

from __future__ import annotations

from typing import Any

from ..kube_helpers import apply, condition, eventually, get, receiver_config

KERBEROS = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex01, namespace: {ns}}}
spec:
  fqdn: ex01.contoso.com
  kerberos:
    realm: CONTOSO.COM
    servicePrincipals: [SMTP/ex01.contoso.com, smtp/ex01.contoso.com]
    keytabSecretRef: {{name: ex01-keytab, key: krb5.keytab}}
    krb5ConfigMapRef: {{name: krb5, key: krb5.conf}}
  ntlm:
    hashesSecretRef: {{name: users, key: ntlm}}
    domain: CONTOSO
---
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: edge01, namespace: {ns}}}
spec:
  fqdn: edge01.contoso.com
  role: Edge
  createDefaultConnectors: false
  kerberos:
    realm: CONTOSO.COM
    servicePrincipals: [{edge_principal}]
    keytabSecretRef: {{name: edge01-keytab, key: krb5.keytab}}
"""
PLAIN = """
apiVersion: smtpgate.io/v1alpha1
kind: TransportServer
metadata: {{name: ex03, namespace: {ns}}}
spec:
  fqdn: ex03.contoso.com
"""


SECRETS = """
apiVersion: v1
kind: Secret
metadata: {{name: ex01-keytab, namespace: {ns}}}
stringData: {{krb5.keytab: a keytab}}
---
apiVersion: v1
kind: Secret
metadata: {{name: edge01-keytab, namespace: {ns}}}
stringData: {{krb5.keytab: a keytab}}
---
apiVersion: v1
kind: Secret
metadata: {{name: users, namespace: {ns}}}
stringData: {{ntlm: "alice:00000000000000000000000000000000"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: krb5, namespace: {ns}}}
data: {{krb5.conf: "[libdefaults]\\n  default_realm = CONTOSO.COM\\n"}}
"""


def test_kerberos_and_ntlm_reach_the_receivers(controlplane: Any, operator: Any, ns: str) -> None:
    apply(controlplane, SECRETS.format(ns=ns))
    apply(controlplane, KERBEROS.format(ns=ns, edge_principal="SMTP/edge01.contoso.com"))

    def kerberos_config() -> Any:
        found = receiver_config(controlplane, ns)["kerberos"]
        assert "SMTP/edge01.contoso.com@CONTOSO.COM" in found["servers"]
        return found

    found = eventually(kerberos_config, what="the organisation's principals in ex01's config")
    assert found["keytabFile"] == "/etc/smtpgate/kerberos/krb5.keytab"
    assert found["realm"] == "CONTOSO.COM"
    assert found["servicePrincipals"] == [
        "SMTP/ex01.contoso.com@CONTOSO.COM",
        "smtp/ex01.contoso.com@CONTOSO.COM",
    ]
    assert found["servers"] == {
        "SMTP/ex01.contoso.com@CONTOSO.COM": "Mailbox",
        "smtp/ex01.contoso.com@CONTOSO.COM": "Mailbox",
        "SMTP/edge01.contoso.com@CONTOSO.COM": "Edge",
    }
    assert receiver_config(controlplane, ns)["ntlm"] == {
        "hashesFile": "/etc/smtpgate/ntlm/ntlm",
        "domain": "CONTOSO",
    }

    pod = get(controlplane, "statefulset", "ex01-receiver", ns)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["keytab"]["secret"]["secretName"] == "ex01-keytab"
    assert volumes["keytab"]["secret"]["items"] == [{"key": "krb5.keytab", "path": "krb5.keytab"}]
    assert volumes["krb5"]["configMap"]["name"] == "krb5"
    assert volumes["ntlm"]["secret"]["secretName"] == "users"
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["keytab"] == "/etc/smtpgate/kerberos"
    assert mounts["krb5"] == "/etc/smtpgate/krb5"
    assert mounts["ntlm"] == "/etc/smtpgate/ntlm"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"KRB5_CONFIG": "/etc/smtpgate/krb5/krb5.conf", "KRB5RCACHEDIR": "/tmp"}

    def credentials(name: str) -> Any:
        return condition(get(controlplane, "rcvc", name, ns), "CredentialsReady")

    ready = eventually(lambda: credentials("client-frontend-ex01"))
    assert (ready["status"], ready["reason"]) == ("True", "Configured")

    # Another server's principals changing reaches this server's config.
    apply(controlplane, KERBEROS.format(ns=ns, edge_principal="SMTP/edge02.contoso.com"))
    eventually(
        lambda: (
            "SMTP/edge02.contoso.com@CONTOSO.COM"
            in receiver_config(controlplane, ns)["kerberos"]["servers"]
        ),
        what="edge01's new principal in ex01's config",
    )
    assert (
        "SMTP/edge01.contoso.com@CONTOSO.COM"
        not in (receiver_config(controlplane, ns)["kerberos"]["servers"])
    )


def test_connector_without_its_servers_credentials_says_so(
    controlplane: Any, operator: Any, ns: str
) -> None:
    apply(controlplane, PLAIN.format(ns=ns))

    def credentials(name: str) -> Any:
        return condition(get(controlplane, "rcvc", name, ns), "CredentialsReady")

    missing = eventually(lambda: credentials("client-frontend-ex03"))
    assert (missing["status"], missing["reason"]) == ("False", "CredentialsMissing")
    assert "GSSAPI (spec.kerberos)" in missing["message"]
    assert "NTLM (spec.ntlm)" in missing["message"]
    config = receiver_config(controlplane, ns, "ex03")
    assert config.get("kerberos") is None and config.get("ntlm") is None
    pod = get(controlplane, "statefulset", "ex03-receiver", ns)
    assert "env" not in pod["spec"]["template"]["spec"]["containers"][0]


def test_a_principal_two_servers_of_different_roles_claim_is_the_edge_servers() -> None:
    """Two TransportServers naming one service principal with different roles (a Mailbox
    server's list copied onto an Edge server, or the reverse): whoever holds that key is
    known as an Edge server, whichever object the API lists first, never as a Mailbox
    server by the order of their names."""
    from smtpgate.connectors.enums import ServerRole
    from smtpgate.operator.integrated import organisation

    def server(name: str, role: str, principals: list[str]) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "spec": {
                "fqdn": f"{name}.contoso.com",
                "role": role,
                "createDefaultConnectors": False,
                "kerberos": {
                    "realm": "CONTOSO.COM",
                    "servicePrincipals": principals,
                    "keytabSecretRef": {"name": f"{name}-keytab", "key": "krb5.keytab"},
                },
            },
        }

    mailbox = server("ex01", "Mailbox", ["SMTP/ex01.contoso.com", "SMTP/edge01.contoso.com"])
    edge = server("edge01", "Edge", ["SMTP/edge01.contoso.com"])
    for servers in ([mailbox, edge], [edge, mailbox]):
        found = organisation(servers)
        assert found["SMTP/edge01.contoso.com@CONTOSO.COM"] is ServerRole.Edge
        assert found["SMTP/ex01.contoso.com@CONTOSO.COM"] is ServerRole.Mailbox
