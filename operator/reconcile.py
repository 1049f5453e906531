"""What one namespace should look like: desired children, statuses and default connectors,
computed from what the API holds. Pure: a Snapshot in, a Plan out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from smtpgate.connectors import certificates, config, defaults, specs, usage
from smtpgate.connectors.enums import AuthMechanism, ServerRole
from smtpgate.connectors.errors import ConflictError, SpecError

from . import certs, resources

Body = dict[str, Any]


@dataclass
class Snapshot:
    """The objects of one namespace that a reconcile reads."""

    namespace: str
    servers: list[Body]
    connectors: list[Body]
    domains: list[Body]
    secrets: list[Body]
    workloads: dict[str, Body] = field(default_factory=dict)


@dataclass
class Plan:
    """What to write: children, statuses by object name, and connectors to create."""

    children: list[Body] = field(default_factory=list)
    connector_status: dict[str, Body] = field(default_factory=dict)
    server_status: dict[str, Body] = field(default_factory=dict)
    domain_status: dict[str, Body] = field(default_factory=dict)
    create: list[Body] = field(default_factory=list)


def condition(kind: str, ok: bool, reason: str, message: str, generation: int | None) -> Body:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _age(body: Body) -> tuple[str, str]:
    return body["metadata"].get("creationTimestamp") or "", body["metadata"]["name"]


def default_connector_bodies(server: Body) -> list[Body]:
    """The role's default connectors for a new server, owned by it."""
    name = server["metadata"]["name"]
    role = ServerRole(server.get("spec", {}).get("role", "Mailbox"))
    out = []
    for row in defaults.for_role(role):
        spec = row.spec(name).model_dump(by_alias=True, mode="json", exclude_defaults=True)
        spec["server"], spec["usage"] = name, row.usage.value
        spec["comment"] = f"{row.named(name)}: created with the server"
        out.append(
            {
                "apiVersion": resources.API_VERSION,
                "kind": "ReceiveConnector",
                "metadata": {
                    "name": resources.slug(row.named(name)),
                    "namespace": server["metadata"]["namespace"],
                    "labels": {
                        "app.kubernetes.io/managed-by": "smtpgate-operator",
                        "smtpgate.io/server": name,
                        "smtpgate.io/default-connector": "true",
                    },
                    "ownerReferences": [resources.owner_reference(server)],
                },
                "spec": spec,
            }
        )
    return out


def _effective_permissions(connector: config.ConnectorConfig) -> list[Body]:
    rows = [
        {"principal": p, "extendedRights": list(r), "deny": False}
        for p, r in connector.grants.items()
    ]
    rows += [
        {"principal": p, "extendedRights": list(r), "deny": True}
        for p, r in connector.denies.items()
    ]
    return rows


def plan(snapshot: Snapshot, *, image: str, now: dt.datetime) -> Plan:
    out = Plan()
    ns = snapshot.namespace
    pool = certs.candidates(snapshot.secrets)
    servers = {
        s["metadata"]["name"]: s
        for s in snapshot.servers
        if not s["metadata"].get("deletionTimestamp")
    }
    domain_specs = []
    for body in snapshot.domains:
        gen = body["metadata"].get("generation")
        try:
            domain_specs.append(specs.parse_spec(specs.AcceptedDomainSpec, body.get("spec", {})))
            out.domain_status[body["metadata"]["name"]] = {
                "observedGeneration": gen,
                "conditions": [
                    condition("Ready", True, "Accepted", "in every server's config", gen)
                ],
            }
        except SpecError as err:
            out.domain_status[body["metadata"]["name"]] = {
                "observedGeneration": gen,
                "conditions": [condition("Ready", False, "InvalidSpec", str(err), gen)],
            }

    parsed: dict[str, tuple[Body, specs.ReceiveConnectorSpec]] = {}
    for body in sorted(snapshot.connectors, key=_age):
        name, gen = body["metadata"]["name"], body["metadata"].get("generation")
        try:
            parsed[name] = (
                body,
                specs.parse_spec(specs.ReceiveConnectorSpec, body.get("spec", {})),
            )
        except SpecError as err:
            out.connector_status[name] = {
                "observedGeneration": gen,
                "conditions": [
                    condition("Accepted", False, "InvalidSpec", str(err), gen),
                    condition("Ready", False, "InvalidSpec", "not in any server's config", gen),
                ],
            }

    for name, (body, spec) in parsed.items():
        if spec.server not in servers:
            gen = body["metadata"].get("generation")
            out.connector_status[name] = {
                "observedGeneration": gen,
                "conditions": [
                    condition(
                        "Accepted",
                        False,
                        "ServerNotFound",
                        f"TransportServer {spec.server!r} does not exist in {ns}; waiting for it",
                        gen,
                    ),
                    condition("Ready", False, "ServerNotFound", "not in any server's config", gen),
                ],
            }

    for server_name, server in sorted(servers.items()):
        gen = server["metadata"].get("generation")
        status: Body = {"observedGeneration": gen}
        try:
            specs.check_server_name(server_name)  # admitted before the CRD's rule, perhaps
            server_spec = specs.parse_spec(specs.TransportServerSpec, server.get("spec", {}))
        except SpecError as err:
            status["conditions"] = [condition("Ready", False, "InvalidSpec", str(err), gen)]
            out.server_status[server_name] = status
            continue
        if (server.get("status") or {}).get("defaultConnectorsCreated") is not True:
            if server_spec.create_default_connectors:
                existing = {b["metadata"]["name"] for b in snapshot.connectors}
                out.create += [
                    b
                    for b in default_connector_bodies(server)
                    if b["metadata"]["name"] not in existing
                ]
            status["defaultConnectorsCreated"] = True
        mine = [(n, s) for n, (b, s) in parsed.items() if s.server == server_name]
        tls: dict[str, config.TlsFiles] = {}
        cert_conditions: dict[str, Body] = {}
        chosen_secret: dict[str, Body] = {}
        for connector_name, connector_spec in mine:
            try:
                resolved = usage.resolve(connector_spec, server_spec.role)
            except SpecError:
                continue  # the compiler rejects it and says why
            if AuthMechanism.TLS not in resolved.auth_mechanisms:
                continue
            fqdn = (connector_spec.fqdn or server_spec.fqdn).rstrip(".")
            cert_name = resolved.certificate_name
            choice = certificates.choose(cert_name, fqdn, pool, now)
            cgen = parsed[connector_name][0]["metadata"].get("generation")
            if choice.chosen is None:
                cert_conditions[connector_name] = condition(
                    "CertificateReady",
                    False,
                    str(choice.reason),
                    choice.message + "; STARTTLS is not offered",
                    cgen,
                )
                continue
            crt, key = resources.tls_paths(choice.chosen.source)
            tls[connector_name] = config.TlsFiles(
                cert_file=crt,
                key_file=key,
                source=choice.chosen.source,
                not_after=choice.chosen.not_after.isoformat(),
            )
            cert_conditions[connector_name] = condition(
                "CertificateReady", True, "Selected", choice.message, cgen
            )
            chosen_secret[connector_name] = {
                "secretName": choice.chosen.source,
                "notAfter": choice.chosen.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        implicit = []
        if server_spec.role is ServerRole.Mailbox:
            delivery = defaults.MAILBOX_DELIVERY
            implicit = [(resources.slug(delivery.named(server_name)), delivery.spec(server_name))]
        users_file = None
        if server_spec.user_database_secret_ref is not None:
            users_file = resources.users_path(server_spec.user_database_secret_ref.key)
        compiled = config.compile_server(
            server_name,
            ns,
            server_spec,
            mine,
            domain_specs,
            tls=tls,
            user_database_file=users_file,
            implicit=implicit,
        )
        owner = resources.owner_reference(server)
        out.children.append(resources.configmap(server_name, ns, compiled.config, owner))
        out.children.append(
            resources.workload(
                server_name,
                ns,
                server_spec,
                compiled.config,
                image=server_spec.image or image,
                owner=owner,
                tls_secrets=sorted(
                    {tls[c.name].source for c in compiled.config.connectors if c.name in tls}
                ),
            )
        )
        out.children += resources.services(server_name, ns, server_spec, compiled.config, owner)
        in_config = {c.name: c for c in compiled.config.connectors}
        for connector_name, _ in mine:
            body = parsed[connector_name][0]
            cgen = body["metadata"].get("generation")
            conditions = []
            entry: Body = {"observedGeneration": cgen}
            if connector_name in compiled.rejected:
                err = compiled.rejected[connector_name]
                reason = "Conflict" if isinstance(err, ConflictError) else "InvalidSpec"
                conditions.append(condition("Accepted", False, reason, str(err), cgen))
            elif not body.get("spec", {}).get("enabled", True):
                conditions.append(
                    condition(
                        "Accepted", True, "Disabled", "valid; disabled, so not listening", cgen
                    )
                )
            else:
                conditions.append(
                    condition("Accepted", True, "Valid", "valid, no conflict on its server", cgen)
                )
            if connector_name in cert_conditions:
                conditions.append(cert_conditions[connector_name])
            if connector_name in in_config:
                conditions.append(
                    condition(
                        "Ready",
                        True,
                        "InConfig",
                        f"in ConfigMap {resources.receiver_name(server_name)}",
                        cgen,
                    )
                )
                entry["effectivePermissions"] = _effective_permissions(in_config[connector_name])
                if connector_name in chosen_secret:
                    entry["certificate"] = chosen_secret[connector_name]
            else:
                conditions.append(
                    condition(
                        "Ready", False, "NotInConfig", "left out of the server's config", cgen
                    )
                )
            entry["conditions"] = conditions
            out.connector_status[connector_name] = entry
        workload = snapshot.workloads.get(server_name) or {}
        ready = int((workload.get("status") or {}).get("readyReplicas") or 0)
        status.update(
            {
                "connectors": len(compiled.config.connectors),
                "readyReplicas": ready,
                "configHash": resources.config_hash(compiled.config),
                "conditions": [
                    condition(
                        "Ready",
                        True,
                        "Reconciled",
                        f"{len(compiled.config.connectors)} connectors in "
                        f"{resources.receiver_name(server_name)}; {ready}/{server_spec.replicas} "
                        "replicas ready",
                        gen,
                    )
                ]
                + (
                    [
                        condition(
                            "ConnectorsRejected",
                            True,
                            "Rejected",
                            ", ".join(sorted(compiled.rejected)),
                            gen,
                        )
                    ]
                    if compiled.rejected
                    else []
                ),
            }
        )
        out.server_status[server_name] = status
    return out
