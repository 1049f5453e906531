"""The Secrets and ConfigMap a TransportServer's receiver pods mount (the BasicAuth user
database, the Kerberos keytab, the NTLM hashes; krb5.conf): whether each exists with its
key, what a missing one means for the server's and its connectors' conditions, and whether
the workload is held.

Pure. The operator caches Secrets other than ``kubernetes.io/tls``, and ConfigMaps, by their
key names only (``slim``): it needs to know that a key is there, never what it holds.

What a missing Secret, ConfigMap or key does:

- The server's ``SecretsReady`` (for a Secret) or ``ConfigMapsReady`` (for the krb5.conf
  ConfigMap) and ``Ready`` conditions are False with reason ``SecretNotFound``,
  ``SecretKeyMissing``, ``ConfigMapNotFound`` or ``ConfigMapKeyMissing``, naming
  namespace/name, field and key; a connector whose mechanisms need it says so in
  ``CredentialsReady`` and ``Ready``.
- No receiver replica ready yet (a new server, or none ever started): the workload is
  written as the spec says; its pods wait in ContainerCreating and start when the kubelet
  finds the object.
- Receivers serving (the object was deleted, or its key removed, under them): their
  workload is held as it is, neither changed nor deleted, so that no rollout replaces a
  serving pod by one that cannot start; the running pods keep the copy they mounted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from smtpgate.connectors import specs
from smtpgate.connectors.enums import AuthMechanism

Body = dict[str, Any]
SECRET, CONFIG_MAP = "Secret", "ConfigMap"
NOT_FOUND = "SecretNotFound"
KEY_MISSING = "SecretKeyMissing"
CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"
CONFIG_MAP_KEY_MISSING = "ConfigMapKeyMissing"
# (not found, key missing) by the kind of object mounted, and the server condition that says so.
REASON_OF = {
    SECRET: (NOT_FOUND, KEY_MISSING),
    CONFIG_MAP: (CONFIG_MAP_NOT_FOUND, CONFIG_MAP_KEY_MISSING),
}
CONDITION_OF = {SECRET: "SecretsReady", CONFIG_MAP: "ConfigMapsReady"}
REASONS = (NOT_FOUND, KEY_MISSING, CONFIG_MAP_NOT_FOUND, CONFIG_MAP_KEY_MISSING)
TLS_TYPE = "kubernetes.io/tls"
# The key-name cache: every Secret but the TLS ones, which the certificate cache holds whole.
FIELD_SELECTOR = f"type!={TLS_TYPE}"

BASIC = frozenset({AuthMechanism.BasicAuth, AuthMechanism.BasicAuthRequireTLS})
KERBEROS = frozenset({AuthMechanism.Integrated, AuthMechanism.ExchangeServer})
NTLM = frozenset({AuthMechanism.Integrated})


@dataclass(frozen=True)
class Ref:
    """One Secret or ConfigMap key the receiver pods mount: the field that names it, and the
    connector mechanisms that need it."""

    field: str
    name: str
    key: str
    needed_by: frozenset[AuthMechanism]
    purpose: str
    kind: str = SECRET

    def label(self) -> str:
        """``name[key]``, the kind first for a ConfigMap."""
        return ("" if self.kind == SECRET else f"{self.kind} ") + f"{self.name}[{self.key}]"


@dataclass(frozen=True)
class Missing:
    """A Secret, ConfigMap or key a server references that is not there."""

    ref: Ref
    reason: str  # one of REASONS
    message: str


def references(spec: specs.TransportServerSpec) -> list[Ref]:
    """Every Secret and ConfigMap key ``spec`` makes its receiver pods mount."""
    refs = []
    if spec.user_database_secret_ref is not None:
        ref = spec.user_database_secret_ref
        refs.append(
            Ref("spec.userDatabaseSecretRef", ref.name, ref.key, BASIC, "the BasicAuth users")
        )
    if spec.kerberos is not None:
        ref_ = spec.kerberos.keytab_secret_ref
        refs.append(
            Ref("spec.kerberos.keytabSecretRef", ref_.name, ref_.key, KERBEROS, "the keytab")
        )
        conf = spec.kerberos.krb5_config_map_ref
        if conf is not None:
            field = "spec.kerberos.krb5ConfigMapRef"
            refs.append(Ref(field, conf.name, conf.key, KERBEROS, "the krb5.conf", CONFIG_MAP))
    if spec.ntlm is not None:
        ref_ = spec.ntlm.hashes_secret_ref
        refs.append(Ref("spec.ntlm.hashesSecretRef", ref_.name, ref_.key, NTLM, "the NTLM hashes"))
    return refs


def names(server: Body, kind: str = SECRET) -> set[str]:
    """The Secret (or ConfigMap) names a TransportServer's raw spec references (it may not
    parse), to know which servers a Secret's (or ConfigMap's) event concerns."""
    spec = server.get("spec") or {}
    found = set()
    fields = (
        (
            (spec, "userDatabaseSecretRef"),
            (spec.get("kerberos"), "keytabSecretRef"),
            (spec.get("ntlm"), "hashesSecretRef"),
        )
        if kind == SECRET
        else ((spec.get("kerberos"), "krb5ConfigMapRef"),)
    )
    for parent, field in fields:
        ref = parent.get(field) if isinstance(parent, dict) else None
        if isinstance(ref, dict) and isinstance(ref.get("name"), str):
            found.add(ref["name"])
    return found


def slim(secret: Body) -> Body:
    """What the key-name cache keeps of a Secret or ConfigMap: its metadata and the names of
    its keys, never the values."""
    meta = secret.get("metadata") or {}
    keys = sorted(_keys(secret))
    return {
        "apiVersion": secret.get("apiVersion", "v1"),
        "kind": secret.get("kind") or SECRET,
        "type": secret.get("type"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
            if k in meta
        },
        "keys": keys,
    }


def _keys(body: Body) -> set[str]:
    # A Secret's data and stringData (as written), a ConfigMap's data and binaryData.
    return {k for f in ("data", "stringData", "binaryData") for k in (body.get(f) or {})}


def key_names(secret: Body) -> set[str]:
    """The keys of a Secret or ConfigMap, slim or whole."""
    if "keys" in secret:
        return set(secret["keys"])
    return _keys(secret)


def check(namespace: str, refs: Iterable[Ref], objects: Iterable[Body]) -> list[Missing]:
    """The references whose Secret or ConfigMap (``objects`` holds both, slim or whole), or
    whose key in it, is not there (one being deleted counts as gone)."""
    by_name = {
        (b.get("kind") or SECRET, b["metadata"]["name"]): b
        for b in objects
        if not b["metadata"].get("deletionTimestamp")
    }
    out = []
    for ref in refs:
        where = f"{ref.kind} {namespace}/{ref.name}"
        not_found, key_missing = REASON_OF[ref.kind]
        found = by_name.get((ref.kind, ref.name))
        if found is None:
            out.append(
                Missing(
                    ref,
                    not_found,
                    f"{where} ({ref.field}, {ref.purpose}, key {ref.key!r}) does not exist",
                )
            )
        elif ref.key not in key_names(found):
            have = ", ".join(sorted(key_names(found))) or "none"
            out.append(
                Missing(
                    ref,
                    key_missing,
                    f"{where} ({ref.field}, {ref.purpose}) has no key {ref.key!r} "
                    f"(its keys: {have})",
                )
            )
    return out


def server_conditions(
    refs: list[Ref], missing: list[Missing]
) -> list[tuple[str, tuple[bool, str, str]]]:
    """The server's ``SecretsReady`` and ``ConfigMapsReady`` as (type, (ok, reason,
    message)), each only when it mounts an object of that kind."""
    out = []
    for kind, type_ in CONDITION_OF.items():
        mine = [r for r in refs if r.kind == kind]
        if not mine:
            continue
        gone = [m for m in missing if m.ref.kind == kind]
        if gone:
            out.append((type_, (False, gone[0].reason, "; ".join(m.message for m in gone))))
        else:
            found = ", ".join(f"{r.name}[{r.key}]" for r in mine)
            what = f"every {kind} key the receivers mount is there: {found}"
            out.append((type_, (True, "Found", what)))
    return out


def effect(missing: list[Missing], held: bool) -> str:
    """What the missing objects do to the receivers, for the Ready condition's message."""
    kinds = sorted({m.ref.kind for m in missing}, reverse=True)  # Secret, then ConfigMap
    back = f"the {' and the '.join(kinds)} {'is' if len(kinds) == 1 else 'are'} back"
    if held:
        return (
            "the receivers that serve keep serving with the copy they mounted; their "
            f"workload is held as it is until {back}"
        )
    return "the receiver pods cannot start until it exists; they start when it does"


@dataclass(frozen=True)
class Assessment:
    """The mounted Secrets and ConfigMap of one server: what it references, what is
    missing, and whether its workload is held as it is."""

    refs: list[Ref]
    missing: list[Missing]
    held: bool

    def conditions(self) -> list[tuple[str, tuple[bool, str, str]]]:
        return server_conditions(self.refs, self.missing)

    def ready_message(self, serving: str) -> str:
        """The server's Ready message while something is missing."""
        what = "; ".join(m.message for m in self.missing)
        return f"{what}; {effect(self.missing, self.held)}; {serving}"


def assess(
    namespace: str, spec: specs.TransportServerSpec, objects: Iterable[Body], workload: Body | None
) -> Assessment:
    """``spec``'s mounted Secrets and ConfigMap against ``objects``, those there. The
    workload is held when one is missing and some of its replicas serve: a changed pod
    template would roll them into pods that cannot start, and a deleted workload would take
    them down."""
    refs = references(spec)
    missing = check(namespace, refs, objects)
    ready = int(((workload or {}).get("status") or {}).get("readyReplicas") or 0)
    return Assessment(refs, missing, bool(missing) and workload is not None and ready > 0)


def connector_condition(
    mechanisms: Iterable[AuthMechanism], refs: list[Ref], missing: list[Missing]
) -> tuple[bool, str, str] | None:
    """(ok, reason, message) of ``CredentialsReady`` as far as the mounted Secrets and
    ConfigMap go, for a connector whose mechanisms need one of ``refs``; None when none of
    them does."""
    offered = set(mechanisms)
    needed = [r for r in refs if r.needed_by & offered]
    if not needed:
        return None
    mine = [m for m in missing if m.ref in needed]
    if not mine:
        found = ", ".join(r.label() for r in needed)
        return True, "Configured", f"the keys its mechanisms need are there: {found}"
    needs = ", ".join(sorted({a.value for m in mine for a in m.ref.needed_by & offered}))
    return (
        False,
        mine[0].reason,
        f"{needs} cannot authenticate: " + "; ".join(m.message for m in mine),
    )


def credentials(
    *verdicts: tuple[bool, str, str] | None,
) -> tuple[bool, str, str] | None:
    """One ``CredentialsReady`` from several: the first that fails, else the first."""
    given = [v for v in verdicts if v is not None]
    failing = [v for v in given if not v[0]]
    return (failing or given)[0] if given else None
