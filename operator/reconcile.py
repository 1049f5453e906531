"""What one namespace should look like: desired children, statuses and default connectors,
computed from what the API holds. Pure: a Snapshot in, a Plan out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from smtpgate.connectors import config, defaults, specs
from smtpgate.connectors.enums import ServerRole
from smtpgate.connectors.errors import ConflictError, SpecError

from . import (
    certs,
    connector_tls,
    integrated,
    queues,
    readiness,
    resources,
    secretrefs,
    spool,
    trust,
)

Body = dict[str, Any]


@dataclass
class Snapshot:
    """The objects of one namespace that a reconcile reads (from the operator's cache)."""

    namespace: str
    servers: list[Body]
    connectors: list[Body]
    domains: list[Body]
    secrets: list[Body]
    workloads: dict[str, Body] = field(default_factory=dict)
    pods: dict[str, list[Body]] = field(default_factory=dict)
    serving: dict[str, frozenset[str]] = field(default_factory=dict)
    queues: dict[str, list[queues.Report]] = field(default_factory=dict)  # StoreAndForward
    spools: dict[str, list[spool.Report]] = field(default_factory=dict)  # Maildir, StoreAndF.
    transport_configs: list[Body] = field(default_factory=list)
    referenced: dict[tuple[str, str], Body | None] = field(default_factory=dict)
    mounted: list[Body] = field(default_factory=list)  # Secrets (not TLS), ConfigMaps: key names


@dataclass
class ServerPlan:
    """What one server should look like. ``children`` None: the spec does not parse, so what
    was serving stays as it is."""

    server: Body
    children: list[Body] | None = None
    status: Body = field(default_factory=dict)
    connector_status: dict[str, Body] = field(default_factory=dict)
    create: list[Body] = field(default_factory=list)
    recheck_after: float | None = None
    held: frozenset[tuple[str, str]] = frozenset()  # (kind, name): neither written nor deleted


@dataclass
class NamespacePlan:
    """Statuses that belong to no server: accepted domains and connectors whose server does
    not exist."""

    connector_status: dict[str, Body] = field(default_factory=dict)
    domain_status: dict[str, Body] = field(default_factory=dict)
    config_status: dict[str, Body] = field(default_factory=dict)


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


def server_of(connector: Body) -> str | None:
    """The server a connector names, read from its raw spec (it may not parse)."""
    server = (connector.get("spec") or {}).get("server")
    return server if isinstance(server, str) else None


def _live_servers(snapshot: Snapshot) -> dict[str, Body]:
    return {
        s["metadata"]["name"]: s
        for s in snapshot.servers
        if not s["metadata"].get("deletionTimestamp")
    }


def _domain_specs(snapshot: Snapshot) -> tuple[list[specs.AcceptedDomainSpec], dict[str, Body]]:
    parsed, status = [], {}
    for body in snapshot.domains:
        gen = body["metadata"].get("generation")
        try:
            parsed.append(specs.parse_spec(specs.AcceptedDomainSpec, body.get("spec", {})))
            cond = condition("Ready", True, "Accepted", "in every server's config", gen)
        except SpecError as err:
            cond = condition("Ready", False, "InvalidSpec", str(err), gen)
        status[body["metadata"]["name"]] = {"observedGeneration": gen, "conditions": [cond]}
    return parsed, status


def _invalid_connector(err: SpecError, gen: int | None) -> Body:
    return {
        "observedGeneration": gen,
        "conditions": [
            condition("Accepted", False, "InvalidSpec", str(err), gen),
            condition("Ready", False, "InvalidSpec", "not in any server's config", gen),
        ],
    }


def plan_namespace(snapshot: Snapshot) -> NamespacePlan:
    """Accepted domains' statuses, and those of connectors whose server does not exist."""
    out = NamespacePlan()
    _, out.domain_status = _domain_specs(snapshot)
    out.config_status = trust.resolve(
        snapshot.namespace,
        snapshot.servers,
        snapshot.transport_configs,
        snapshot.secrets,
        referenced=snapshot.referenced,
    ).status
    servers = _live_servers(snapshot)
    for body in snapshot.connectors:
        server = server_of(body)
        if server in servers:
            continue
        name, gen = body["metadata"]["name"], body["metadata"].get("generation")
        try:
            specs.parse_spec(specs.ReceiveConnectorSpec, body.get("spec", {}))
        except SpecError as err:
            out.connector_status[name] = _invalid_connector(err, gen)
            continue
        out.connector_status[name] = {
            "observedGeneration": gen,
            "conditions": [
                condition(
                    "Accepted",
                    False,
                    "ServerNotFound",
                    f"TransportServer {server!r} does not exist in {snapshot.namespace}; "
                    "waiting for it",
                    gen,
                ),
                condition("Ready", False, "ServerNotFound", "not in any server's config", gen),
            ],
        }
    return out


def plan_server(
    snapshot: Snapshot,
    server_name: str,
    *,
    image: str,
    now: dt.datetime,
    self_signed_validity: dt.timedelta = certs.DEFAULT_VALIDITY,
) -> ServerPlan | None:
    """Children and statuses of one server; None when the server is gone or going."""
    ns = snapshot.namespace
    server = _live_servers(snapshot).get(server_name)
    if server is None:
        return None
    out = ServerPlan(server=server)
    gen = server["metadata"].get("generation")
    previous = server.get("status") or {}
    status: Body = {"observedGeneration": gen}
    if previous.get("defaultConnectorsCreated") is True:
        status["defaultConnectorsCreated"] = True
    bodies = [b for b in snapshot.connectors if server_of(b) == server_name]
    try:
        specs.check_server_name(server_name)  # admitted before the CRD's rule, perhaps
        server_spec = specs.parse_spec(specs.TransportServerSpec, server.get("spec", {}))
    except SpecError as err:
        keep = (
            "; the last good configuration keeps serving"
            if snapshot.workloads.get(server_name)
            else ""
        )
        status["conditions"] = [condition("Ready", False, "InvalidSpec", f"{err}{keep}", gen)]
        for key in ("connectors", "readyReplicas", "configHash"):
            if key in previous:
                status[key] = previous[key]
        out.status = status
        for body in bodies:
            cgen = body["metadata"].get("generation")
            out.connector_status[body["metadata"]["name"]] = {
                **(body.get("status") or {}),
                "observedGeneration": cgen,
                "conditions": [
                    c
                    for c in (body.get("status") or {}).get("conditions") or []
                    if c.get("type") != "Ready"
                ]
                + [
                    condition(
                        "Ready",
                        False,
                        "ServerInvalid",
                        f"TransportServer {server_name} has an invalid spec{keep}",
                        cgen,
                    )
                ],
            }
        return out

    pending: list[Body] = []
    if status.get("defaultConnectorsCreated") is not True:
        if server_spec.create_default_connectors:
            existing = {b["metadata"]["name"] for b in snapshot.connectors}
            pending = [
                b for b in default_connector_bodies(server) if b["metadata"]["name"] not in existing
            ]
            out.create = pending
        status["defaultConnectorsCreated"] = True
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    for body in pending:  # compiled now, as they will be, so the config is written once
        body["metadata"]["creationTimestamp"] = stamp
    in_service = snapshot.serving.get(server_name, frozenset())

    def precedence(body: Body) -> tuple[bool, str, str]:
        # What serves keeps serving: a connector in the config whose spec has not changed
        # since (its status observed this generation) comes first, so that an edit which
        # makes an older connector clash with it is the one refused. Then oldest first.
        meta = body["metadata"]
        observed = (body.get("status") or {}).get("observedGeneration")
        steady = meta["name"] in in_service and observed == meta.get("generation")
        return (not steady, *_age(body))

    parsed: dict[str, tuple[Body, specs.ReceiveConnectorSpec]] = {}
    for body in sorted([*bodies, *pending], key=precedence):
        name, cgen = body["metadata"]["name"], body["metadata"].get("generation")
        try:
            parsed[name] = (
                body,
                specs.parse_spec(specs.ReceiveConnectorSpec, body.get("spec", {})),
            )
        except SpecError as err:
            out.connector_status[name] = _invalid_connector(err, cgen)
    domain_specs, _ = _domain_specs(snapshot)
    pool = certs.candidates(snapshot.secrets)
    out.recheck_after = connector_tls.next_boundary(pool, now)
    owner = resources.owner_reference(server)
    own = certs.read_self_signed(
        next(
            (
                s
                for s in snapshot.secrets
                if s["metadata"]["name"] == certs.self_signed_name(server_name)
            ),
            None,
        )
    )
    issued: dict[str, certs.SelfSigned] = {}
    if own is None or not certs.usable(own, server_spec.fqdn, now):
        own = issued[server_name] = certs.issue(
            server_name, server_spec.fqdn, now, self_signed_validity
        )
    renew_in = (own.renew_after - now).total_seconds() + 1
    out.recheck_after = min(out.recheck_after or renew_in, renew_in)
    mine = [(n, s) for n, (b, s) in parsed.items()]
    implicit: list[tuple[str, specs.ReceiveConnectorSpec]] = []
    if server_spec.role is ServerRole.Mailbox:
        delivery = defaults.MAILBOX_DELIVERY
        implicit = [(resources.slug(delivery.named(server_name)), delivery.spec(server_name))]
    implicit_names = {name for name, _ in implicit}
    chosen = connector_tls.choose(server_spec, implicit, mine, pool, own, now)
    tls = chosen.tls
    users_file = None
    if server_spec.user_database_secret_ref is not None:
        users_file = resources.users_path(server_spec.user_database_secret_ref.key)
    kerberos_config, ntlm_config = integrated.compiled(server_spec, snapshot.servers)
    org = trust.resolve(
        ns,
        snapshot.servers,
        snapshot.transport_configs,
        snapshot.secrets,
        issued,
        snapshot.referenced,
    ).org
    compiled = config.compile_server(
        server_name,
        ns,
        server_spec,
        mine,
        domain_specs,
        tls=tls,
        user_database_file=users_file,
        implicit=implicit,
        kerberos=kerberos_config,
        ntlm=ntlm_config,
        org=org,
    )
    workload_body = resources.workload(
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
    out.children = [
        certs.secret_body(server_name, ns, owner, own, resources.labels(server_name)),
        resources.configmap(server_name, ns, compiled.config, owner),
        workload_body,
        *resources.services(server_name, ns, server_spec, compiled.config, owner),
        resources.metrics_service(server_name, ns, owner),
        resources.disruption_budget(server_name, ns, server_spec, owner),
    ]
    workload = snapshot.workloads.get(server_name)
    mounted = secretrefs.assess(ns, server_spec, [*snapshot.mounted, *snapshot.secrets], workload)
    if mounted.held and workload is not None:  # what serves stays as it is
        out.children.remove(workload_body)
        out.held = frozenset({(workload["kind"], workload["metadata"]["name"])})
    elif workload is not None and workload.get("kind") != workload_body["kind"]:
        workload = None  # the next hop changed the workload's kind; the new one is coming
    pods_ok, reason, message = readiness.serving(
        workload,
        snapshot.pods.get(server_name, []),
        server_spec.replicas,
        (workload or workload_body)["kind"],
        resources.receiver_name(server_name),
    )
    refused = spool.refusal(snapshot.spools.get(server_name, [])) if pods_ok else None
    if refused is not None:  # up, but new MAIL gets 452 (or 451): not serving
        pods_ok, (reason, message) = False, refused
    pods_reason, ok, server_message = reason, pods_ok, message
    if mounted.missing:
        ok, reason = False, mounted.missing[0].reason
        server_message = mounted.ready_message(message)
    in_config = {c.name: c for c in compiled.config.connectors}
    to_create = {b["metadata"]["name"] for b in pending}
    for connector_name, _ in mine:
        body = parsed[connector_name][0]
        if connector_name in to_create:
            continue
        cgen = body["metadata"].get("generation")
        conditions = []
        entry: Body = {"observedGeneration": cgen}
        if connector_name in compiled.rejected:
            err = compiled.rejected[connector_name]
            reason_ = "Conflict" if isinstance(err, ConflictError) else "InvalidSpec"
            conditions.append(condition("Accepted", False, reason_, str(err), cgen))
        elif not body.get("spec", {}).get("enabled", True):
            conditions.append(
                condition("Accepted", True, "Disabled", "valid; disabled, so not listening", cgen)
            )
        else:
            conditions.append(
                condition("Accepted", True, "Valid", "valid, no conflict on its server", cgen)
            )
        if (verdict := chosen.verdicts.get(connector_name)) is not None:
            conditions.append(
                condition("CertificateReady", verdict.ok, verdict.reason, verdict.message, cgen)
            )
        credentials = (
            secretrefs.credentials(
                secretrefs.connector_condition(
                    in_config[connector_name].auth_mechanisms, mounted.refs, mounted.missing
                ),
                integrated.credentials_condition(
                    in_config[connector_name], server_spec, server_name
                ),
            )
            if connector_name in in_config
            else None
        )
        if credentials is not None:
            conditions.append(condition("CredentialsReady", *credentials, cgen))
        if credentials is not None and credentials[1] in secretrefs.REASONS:
            blocked_by_secret: tuple[str, str] | None = credentials[1], credentials[2]
        else:
            blocked_by_secret = None
        if connector_name in in_config:
            where = f"in ConfigMap {resources.receiver_name(server_name)}"
            extra, blocked, why = trust.connector_conditions(in_config[connector_name], org, cgen)
            conditions.extend(extra)
            conditions.extend(
                trust.inert_settings(body.get("spec") or {}, in_config[connector_name], cgen)
            )
            if blocked is None and blocked_by_secret is not None:
                blocked, why = blocked_by_secret
            conditions.append(
                condition("Ready", False, blocked, f"{where}; {why}", cgen)
                if blocked is not None
                else condition("Ready", True, "Serving", f"{where}; {message}", cgen)
                if pods_ok
                else condition("Ready", False, pods_reason, f"{where}; {message}", cgen)
                if pods_reason in spool.REASONS
                else condition("Ready", False, "ServerNotReady", f"{where}; {server_message}", cgen)
            )
            entry["effectivePermissions"] = in_config[connector_name].acl.rows()
            if connector_name in chosen.secrets:
                entry["certificate"] = chosen.secrets[connector_name]
        else:
            conditions.append(
                condition("Ready", False, "NotInConfig", "left out of the server's config", cgen)
            )
        entry["conditions"] = conditions
        out.connector_status[connector_name] = entry
    workload_status = (workload or {}).get("status") or {}
    ready_replicas = int(workload_status.get("readyReplicas") or 0)
    listed = [c for c in compiled.config.connectors if c.name not in implicit_names]
    status.update(
        {
            "connectors": len(listed),
            "readyReplicas": ready_replicas,
            "replicas": int(workload_status.get("replicas") or 0),
            "replicasReady": f"{ready_replicas}/{server_spec.replicas}",
            "selector": resources.selector_text(server_name),
            "configHash": resources.config_hash(compiled.config),
            "selfSignedCertificate": own.status(),
            "conditions": [
                condition(
                    "Ready",
                    ok,
                    reason,
                    f"{len(compiled.config.connectors)} connectors in "
                    f"{resources.receiver_name(server_name)}; {server_message}",
                    gen,
                )
            ]
            + [condition(type_, *verdict, gen) for type_, verdict in mounted.conditions()]
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
    if server_spec.next_hop.store_and_forward:
        threshold = server_spec.next_hop.queue_settings.age_warning_seconds
        status["conditions"].append(
            queues.condition(snapshot.queues.get(server_name, []), threshold, gen)
        )
        out.recheck_after = min(out.recheck_after or queues.RECHECK_SECONDS, queues.RECHECK_SECONDS)
    if server_spec.next_hop.spooled:
        status["conditions"].append(spool.condition(snapshot.spools.get(server_name, []), gen))
        out.recheck_after = min(out.recheck_after or queues.RECHECK_SECONDS, queues.RECHECK_SECONDS)
    out.status = status
    return out


def failed(plan: ServerPlan, message: str) -> None:
    """A write of this server's children failed: say so in its status and its connectors'."""
    gen = plan.server["metadata"].get("generation")
    conditions = [c for c in plan.status.get("conditions", []) if c["type"] != "Ready"]
    plan.status["conditions"] = [
        condition("Ready", False, "ApplyFailed", message, gen),
        *conditions,
    ]
    for entry in plan.connector_status.values():
        conds = entry.get("conditions", [])
        for i, cond in enumerate(conds):
            if cond["type"] == "Ready" and cond["status"] == "True":
                conds[i] = condition(
                    "Ready",
                    False,
                    "ServerNotReady",
                    f"its server's objects could not be written: {message}",
                    cond["observedGeneration"],
                )


# -- what to write ------------------------------------------------------------------------
def contains(actual: Any, desired: Any) -> bool:
    """Whether ``actual`` already holds everything ``desired`` says (the API server adds
    defaults and status, so extra keys in ``actual`` do not count)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(
            contains(actual.get(k), v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(contains(a, d) for a, d in zip(actual, desired, strict=True))
        )
    return bool(actual == desired)


def merged_status(current: Body | None, desired: Body, now: str) -> Body | None:
    """The merge patch that turns ``current`` into ``desired``, keeping each condition's
    lastTransitionTime while its status stays the same; None when nothing would change."""
    current = current or {}
    old_conditions = {c["type"]: c for c in current.get("conditions") or []}
    merged = dict(desired)
    if "conditions" in desired:
        merged["conditions"] = []
        for cond in desired["conditions"]:
            old = old_conditions.get(cond["type"])
            stamp = (
                old.get("lastTransitionTime") if old and old["status"] == cond["status"] else now
            )
            merged["conditions"].append({**cond, "lastTransitionTime": stamp or now})
    gone = {key: None for key in current if key not in merged}
    if not gone and all(current.get(k) == v for k, v in merged.items()):
        return None
    return {**merged, **gone}


def transitions(current: Body | None, patch: Body) -> list[Body]:
    """Conditions that deserve an Event: those whose status or reason a status patch changes,
    and, on an object's first status, the failures other than Ready (a new object is not
    Ready until its pods serve; that it then becomes Ready is the Event worth having)."""
    old = {c["type"]: c for c in (current or {}).get("conditions") or []}
    out = []
    for cond in patch.get("conditions") or []:
        before = old.get(cond["type"])
        if before is None:
            failure = cond["status"] == "False" or cond["type"] == "ConnectorsRejected"
            if failure and cond["type"] != "Ready":
                out.append(cond)
        elif before.get("status") != cond["status"] or before.get("reason") != cond["reason"]:
            out.append(cond)
    return out
