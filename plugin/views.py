"""What ``kubectl smtpgate`` prints, made from resources' bodies and a server's compiled config.
Pure: bodies in, text out; the model answers every question of who lands where and may do
what."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from smtpgate.connectors import config, organization, permissions, ranges, specs, usage
from smtpgate.connectors.enums import (
    AuthMechanism,
    Permission,
    Principal,
    ServerRole,
    TrustedServerRole,
)

Body = dict[str, Any]
_ORDER = {p.value: i for i, p in enumerate(Permission)}


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns as kubectl prints them: upper-case headers, left-aligned, three spaces apart."""
    lines = [list(header), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _rights(rights: Iterable[str]) -> list[str]:
    """Rights in the reference's order (the documented eleven, then the internal ones)."""
    return sorted((str(r) for r in rights), key=lambda r: (_ORDER.get(r, len(_ORDER)), r))


# -- conditions ---------------------------------------------------------------------------
def condition(body: Body, kind: str) -> Body | None:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def current(body: Body, kind: str) -> Body:
    """A condition as it holds for the spec now: ``Unknown`` when the operator has not
    written it yet, or wrote it for an older generation of the spec."""
    generation = body["metadata"].get("generation")
    cond = condition(body, kind)
    if cond is None:
        return {"status": "Unknown", "reason": "NoStatus", "message": "no status written yet"}
    observed = cond.get("observedGeneration")
    if observed is None:
        observed = (body.get("status") or {}).get("observedGeneration")
    if observed != generation:
        return {
            "status": "Unknown",
            "reason": "Stale",
            "message": f"status is for generation {observed}; the spec is at {generation}",
        }
    return cond


def _state(cond: Body) -> str:
    return "True" if cond["status"] == "True" else f"{cond['status']} ({cond.get('reason')})"


# -- permissions --------------------------------------------------------------------------
def effective_permissions(connector: Body, server: Body | None) -> tuple[list[Body], str | None]:
    """The connector's ``status.effectivePermissions`` when they are for its current spec,
    else the same rows computed from the spec by the model, with a note saying why.
    Raises SpecError when the spec does not parse."""
    status = connector.get("status") or {}
    rows = status.get("effectivePermissions")
    ready = current(connector, "Ready")
    if rows is not None and ready["reason"] != "Stale":
        return rows, None
    spec = specs.parse_spec(specs.ReceiveConnectorSpec, connector.get("spec") or {})
    role = ServerRole((server or {}).get("spec", {}).get("role") or ServerRole.Mailbox)
    why = "none in the status" if rows is None else "the status is stale"
    note = f"computed from the spec ({why}; Ready {ready['status']}: {ready['reason']})"
    if server is None:
        note += f"; TransportServer {spec.server!r} not found, read as a Mailbox server"
    return config.access_list(usage.resolve(spec, role)).rows(), note


def permissions_table(rows: Iterable[Body]) -> str:
    """Get-ADPermission's view: one line per principal, extended right and access."""
    lines = [
        (row["principal"], right, "Deny" if row.get("deny") else "Allow")
        for row in sorted(rows, key=lambda r: (r["principal"], bool(r.get("deny"))))
        for right in _rights(row.get("extendedRights") or [])
    ]
    return table(("PRINCIPAL", "EXTENDED RIGHTS", "ACCESS"), lines)


# -- which --------------------------------------------------------------------------------
def _locals(cfg: config.ServerConfig, port: int, remote: ranges.IPAddress) -> list[Any]:
    """The local addresses a client of ``remote``'s family may reach ``port`` on: each
    address a connector binds to, then any other address (all-address bindings)."""
    specific = sorted(
        {
            b.ip
            for c in cfg.connectors
            for b in c.parsed_bindings
            if b.port == port and b.version == remote.version and not b.all_addresses
        },
        key=int,
    )
    anywhere = ipaddress.ip_address("0.0.0.0" if remote.version == 4 else "::")
    return [*specific, anywhere]


def _principal_block(title: str, principals: frozenset[str], acl: permissions.Acl) -> list[str]:
    rights = _rights(acl.effective(principals))
    lines = [f"  {title}: {', '.join(sorted(principals))}"]
    lines += [f"    may: {r}" for r in rights] or ["    may: nothing"]
    denied = _rights(set().union(*(acl.denies.get(p, frozenset()) for p in principals)))
    lines += [f"    denied: {r}" for r in denied]
    return lines


def which(
    cfg: config.ServerConfig,
    remote: ranges.IPAddress,
    port: int,
    local: ranges.IPAddress | None = None,
    user: str | None = None,
) -> str:
    """Which connector a client from ``remote`` connecting to ``port`` lands on, for each
    local address it may reach (or the one given), and what it may do there."""
    remote = ranges.unmap(remote)
    out = [f"Server {cfg.server} ({cfg.namespace}): a client from {remote} to port {port}"]
    for address in [ranges.unmap(local)] if local is not None else _locals(cfg, port, remote):
        where = "any other address" if address.is_unspecified else str(address)
        out.append("")
        out.append(f"To {where}, port {port}:")
        bound = [
            c for c in cfg.connectors if any(b.accepts(address, port) for b in c.parsed_bindings)
        ]
        chosen = cfg.connector_for(address, port, remote)
        if chosen is None:
            out.append(
                "  no connector: nothing listens here"
                if not bound
                else f"  no connector: no remote range of {', '.join(c.name for c in bound)} "
                f"holds {remote}; the client is refused (554 5.7.1)"
            )
            continue
        matched = ranges.most_specific(((r, [r]) for r in chosen.parsed_ranges), remote)
        out.append(f"  connector: {chosen.name} ({chosen.usage}, {chosen.transport_role})")
        out.append(f"  matched range: {matched} (the most specific range holding {remote})")
        for other in bound:
            if other is chosen:
                continue
            theirs = ranges.most_specific(((r, [r]) for r in other.parsed_ranges), remote)
            if theirs is not None:
                out.append(f"  also holds {remote}: {other.name} with {theirs} (less specific)")
        mechanisms = ", ".join(chosen.auth_mechanisms) or "None"
        out.append(f"  auth mechanisms: {mechanisms}")
        out += _principal_block(
            "anonymous", permissions.anonymous(chosen.auth_mechanisms), chosen.acl
        )
        if chosen.offers(AuthMechanism.BasicAuth):
            after = " (after STARTTLS)" if chosen.offers(AuthMechanism.BasicAuthRequireTLS) else ""
            out += _principal_block(
                f"after AUTH{after}",
                # An unnamed user holds only the group; --user adds the name, for granular
                # entries that name one user.
                permissions.authenticated_user(user)
                if user
                else frozenset({Principal.AuthenticatedUsers.value}),
                chosen.acl,
            )
        else:
            out.append("  after AUTH: AUTH is not offered (no BasicAuth)")
        out += _tls_blocks(cfg, chosen)
    return "\n".join(out)


def _tls_blocks(cfg: config.ServerConfig, chosen: config.ConnectorConfig) -> list[str]:
    """What a server certificate (Direct Trust) and a partner certificate (domain
    security) hold on ``chosen``, ``<Domain>`` resolved as the config resolves it."""
    org = cfg.organization
    lines: list[str] = []
    if chosen.offers(AuthMechanism.ExchangeServer) and chosen.starttls_available:
        for role in TrustedServerRole:
            lines += _principal_block(
                f"Direct Trust, a {role} server's certificate",
                organization.role_principals(role, org.domain),
                chosen.acl,
            )
    if chosen.domain_secure_enabled:
        domains = ", ".join(org.domain_secure_domains) or "no domain-secure domains"
        lines += _principal_block(
            f"domain security ({domains})",
            frozenset({Principal.PartnerServers.value}),
            chosen.acl,
        )
    return lines


# -- status -------------------------------------------------------------------------------
def _certificate(connector: Body) -> str:
    cond = condition(connector, "CertificateReady")
    if cond is None:
        return "-"
    chosen = (connector.get("status") or {}).get("certificate") or {}
    if cond.get("status") == "True" and chosen:
        return f"{chosen.get('secretName')} (until {chosen.get('notAfter')})"
    return _state(cond)


def _replicas(server: Body) -> str:
    want = (server.get("spec") or {}).get("replicas", 1)
    return f"{(server.get('status') or {}).get('readyReplicas', 0)}/{want}"


def status(servers: list[Body], connectors: list[Body], domains: list[Body], wide: bool) -> str:
    """Servers, connectors, accepted domains and what is not well, at a glance. ``wide``
    adds a NAMESPACE column (``-A``)."""

    def ns(body: Body) -> list[str]:
        return [body["metadata"]["namespace"]] if wide else []

    def key(body: Body) -> tuple[str, ...]:
        return body["metadata"]["namespace"], body["metadata"]["name"]

    prefix = ["NAMESPACE"] if wide else []
    sections = []
    rows = [
        [
            *ns(s),
            s["metadata"]["name"],
            str((s.get("spec") or {}).get("role", "Mailbox")),
            str((s.get("spec") or {}).get("fqdn", "")),
            _replicas(s),
            str((s.get("status") or {}).get("connectors", "-")),
            _state(current(s, "Ready")),
        ]
        for s in sorted(servers, key=key)
    ]
    header = ["NAME", "ROLE", "FQDN", "REPLICAS", "CONNECTORS", "READY"]
    sections.append("SERVERS\n" + table([*prefix, *header], rows) if rows else "No servers.")
    rows = [
        [
            *ns(c),
            c["metadata"]["name"],
            str((c.get("spec") or {}).get("server", "")),
            str((c.get("spec") or {}).get("usage", "")),
            ",".join((c.get("spec") or {}).get("bindings") or ["(usage default)"]),
            _state(current(c, "Accepted")),
            _certificate(c),
            _state(current(c, "Ready")),
        ]
        for c in sorted(connectors, key=lambda c: (key(c)[0], server_of(c), key(c)[1]))
    ]
    header = ["NAME", "SERVER", "USAGE", "BINDINGS", "ACCEPTED", "CERTIFICATE", "READY"]
    sections.append("CONNECTORS\n" + table([*prefix, *header], rows) if rows else "No connectors.")
    if domains:
        rows = [
            [
                *ns(d),
                d["metadata"]["name"],
                str((d.get("spec") or {}).get("domainName", "")),
                str((d.get("spec") or {}).get("domainType", "")),
                _state(current(d, "Ready")),
            ]
            for d in sorted(domains, key=key)
        ]
        header = ["NAME", "DOMAIN", "TYPE", "READY"]
        sections.append("ACCEPTED DOMAINS\n" + table([*prefix, *header], rows))
    problems = [
        f"{kind}/{b['metadata']['name']}"
        + (f" -n {b['metadata']['namespace']}" if wide else "")
        + f": {c['type']} {c['status']} ({c['reason']}): {c.get('message', '')}"
        for kind, bodies in (
            ("transportserver", servers),
            ("receiveconnector", connectors),
            ("accepteddomain", domains),
        )
        for b in sorted(bodies, key=key)
        for c in _not_well(b)
    ]
    if problems:
        sections.append("NOT WELL\n" + "\n".join(problems))
    return "\n\n".join(sections)


def server_of(connector: Body) -> str:
    return str((connector.get("spec") or {}).get("server", ""))


def _not_well(body: Body) -> list[Body]:
    """Conditions that say something is wrong, each as it holds for the current spec."""
    kinds = [c.get("type") for c in (body.get("status") or {}).get("conditions") or []]
    disabled = (condition(body, "Accepted") or {}).get("reason") == "Disabled"
    out = []
    for kind in dict.fromkeys(["Ready", *kinds]):
        cond = {"type": kind, **current(body, str(kind))}
        if kind == "ConnectorsRejected":
            bad = cond["status"] == "True"  # names the connectors left out
        else:
            bad = cond["status"] != "True" and not (disabled and kind == "Ready")
        if bad:
            out.append(cond)
    return out
