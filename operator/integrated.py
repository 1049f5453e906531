"""Kerberos and NTLM for a server's receivers, on the Kubernetes side: the organisation's
service principals gathered from its TransportServers, the keytab, krb5.conf and NT hash
volumes the receiver pods mount, and the ``CredentialsReady`` condition of a connector whose
Integrated or ExchangeServer mechanism lacks its server's credentials."""

from __future__ import annotations

from typing import Any

from smtpgate.connectors import kerberos, specs
from smtpgate.connectors.config import ConnectorConfig
from smtpgate.connectors.enums import ServerRole
from smtpgate.connectors.errors import SpecError

Body = dict[str, Any]
RCACHE_DIR = "/tmp"  # the replay cache: the pod's writable emptyDir


def organisation(servers: list[Body]) -> dict[str, ServerRole]:
    """Every service principal (realm explicit) of the namespace's TransportServers, to the
    role of its server. A server whose spec is invalid is left out (its status says why).
    A principal servers of both roles name is an Edge server's (the fewer rights), not
    whichever object the API listed last."""
    found: dict[str, ServerRole] = {}
    for body in servers:
        if body["metadata"].get("deletionTimestamp"):
            continue
        try:
            spec = specs.parse_spec(specs.TransportServerSpec, body.get("spec", {}))
        except SpecError:
            continue
        if spec.kerberos is not None:
            for principal in spec.kerberos.principals():
                if found.get(principal) is not ServerRole.Edge:
                    found[principal] = spec.role
    return found


def compiled(
    spec: specs.TransportServerSpec, servers: list[Body]
) -> tuple[kerberos.KerberosConfig | None, kerberos.NtlmConfig | None]:
    """What ``ServerConfig`` carries for ``spec``'s Kerberos and NTLM."""
    return (
        kerberos.compile_kerberos(spec.kerberos, organisation(servers)),
        kerberos.compile_ntlm(spec.ntlm),
    )


def pod_parts(spec: specs.TransportServerSpec) -> tuple[list[Body], list[Body], list[Body]]:
    """The volumes, volume mounts and environment the receiver container needs for
    ``spec.kerberos`` and ``spec.ntlm`` (nothing without them)."""
    volumes: list[Body] = []
    mounts: list[Body] = []
    env: list[Body] = []

    def secret(name: str, ref: kerberos.KeyRef, path: str) -> None:
        volumes.append(
            {
                "name": name,
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": ref.key}],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": name, "mountPath": path, "readOnly": True})

    if spec.kerberos is not None:
        secret("keytab", spec.kerberos.keytab_secret_ref, kerberos.KEYTAB_DIR)
        env.append({"name": "KRB5RCACHEDIR", "value": RCACHE_DIR})
        ref = spec.kerberos.krb5_config_map_ref
        if ref is not None:
            volumes.append(
                {
                    "name": "krb5",
                    "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": ref.key}]},
                }
            )
            mounts.append({"name": "krb5", "mountPath": kerberos.KRB5_CONF_DIR, "readOnly": True})
            env.append({"name": "KRB5_CONFIG", "value": kerberos.krb5_conf_path(ref)})
    if spec.ntlm is not None:
        secret("ntlm", spec.ntlm.hashes_secret_ref, kerberos.NTLM_DIR)
    return volumes, mounts, env


def credentials_condition(
    connector: ConnectorConfig, spec: specs.TransportServerSpec, server: str
) -> tuple[bool, str, str] | None:
    """(ok, reason, message) of a connector offering Integrated or ExchangeServer; None for
    one that offers neither."""
    missing = kerberos.missing_credentials(
        connector.auth_mechanisms, spec.kerberos is not None, spec.ntlm is not None
    )
    if missing is None:
        return None
    if not missing:
        return True, "Configured", "Kerberos and NTLM credentials are configured on the server"
    return (
        False,
        "CredentialsMissing",
        f"TransportServer {server} has no "
        + " and no ".join(missing)
        + ": "
        + ", ".join(f"{m.split()[0]} is not offered" for m in missing),
    )
