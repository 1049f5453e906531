"""The Secrets a TransportServer's receiver pods mount (the BasicAuth user database, the
Kerberos keytab, the NTLM hashes): whether each exists with its key, what a missing one
means for the server's and its connectors' conditions, and whether the workload is held.

Pure. The operator caches Secrets other than ``kubernetes.io/tls`` by their key names only
(``slim``): it needs to know that a key is there, never what it holds.

What a missing Secret or key does:

- The server's ``SecretsReady`` and ``Ready`` conditions are False with reason
  ``SecretNotFound`` or ``SecretKeyMissing``, naming namespace/name and key; a connector
  whose mechanisms need it says so in ``CredentialsReady`` and ``Ready``.
- No receiver replica ready yet (a new server, or none ever started): the workload is
  written as the spec says; its pods wait in ContainerCreating and start when the kubelet
  finds the Secret.
- Receivers serving (the Secret was deleted, or its key removed, under them): their
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
NOT_FOUND = "SecretNotFound"
KEY_MISSING = "SecretKeyMissing"
REASONS = (NOT_FOUND, KEY_MISSING)
TLS_TYPE = "kubernetes.io/tls"
# The key-name cache: every Secret but the TLS ones, which the certificate cache holds whole.
FIELD_SELECTOR = f"type!={TLS_TYPE}"

BASIC = frozenset({AuthMechanism.BasicAuth, AuthMechanism.BasicAuthRequireTLS})
KERBEROS = frozenset({AuthMechanism.Integrated, AuthMechanism.ExchangeServer})
NTLM = frozenset({AuthMechanism.Integrated})


@dataclass(frozen=True)
class Ref:
    """One Secret key the receiver pods mount: the field that names it, and the connector
    mechanisms that need it."""

    field: str
    name: str
    key: str
    needed_by: frozenset[AuthMechanism]
    purpose: str


@dataclass(frozen=True)
class Missing:
    """A Secret or key a server references that is not there."""

    ref: Ref
    reason: str  # NOT_FOUND or KEY_MISSING
    message: str


def references(spec: specs.TransportServerSpec) -> list[Ref]:
    """Every Secret key ``spec`` makes its receiver pods mount."""
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
    if spec.ntlm is not None:
        ref_ = spec.ntlm.hashes_secret_ref
        refs.append(Ref("spec.ntlm.hashesSecretRef", ref_.name, ref_.key, NTLM, "the NTLM hashes"))
    return refs


def names(server: Body) -> set[str]:
    """The Secret names a TransportServer's raw spec references (it may not parse), to
    know which servers a Secret's event concerns."""
    spec = server.get("spec") or {}
    found = set()
    for parent, field in (
        (spec, "userDatabaseSecretRef"),
        (spec.get("kerberos"), "keytabSecretRef"),
        (spec.get("ntlm"), "hashesSecretRef"),
    ):
        ref = parent.get(field) if isinstance(parent, dict) else None
        if isinstance(ref, dict) and isinstance(ref.get("name"), str):
            found.add(ref["name"])
    return found


def slim(secret: Body) -> Body:
    """What the key-name cache keeps of a Secret: its metadata and the names of its keys,
    never the values."""
    meta = secret.get("metadata") or {}
    keys = sorted({*(secret.get("data") or {}), *(secret.get("stringData") or {})})
    return {
        "apiVersion": secret.get("apiVersion", "v1"),
        "kind": "Secret",
        "type": secret.get("type"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
            if k in meta
        },
        "keys": keys,
    }


def key_names(secret: Body) -> set[str]:
    """The keys of a Secret, slim or whole."""
    if "keys" in secret:
        return set(secret["keys"])
    return {*(secret.get("data") or {}), *(secret.get("stringData") or {})}


def check(namespace: str, refs: Iterable[Ref], secrets: Iterable[Body]) -> list[Missing]:
    """The references whose Secret, or whose key in it, is not there (a Secret being
    deleted counts as gone)."""
    by_name = {
        s["metadata"]["name"]: s for s in secrets if not s["metadata"].get("deletionTimestamp")
    }
    out = []
    for ref in refs:
        where = f"Secret {namespace}/{ref.name}"
        secret = by_name.get(ref.name)
        if secret is None:
            out.append(
                Missing(
                    ref,
                    NOT_FOUND,
                    f"{where} ({ref.field}, {ref.purpose}) does not exist",
                )
            )
        elif ref.key not in key_names(secret):
            have = ", ".join(sorted(key_names(secret))) or "none"
            out.append(
                Missing(
                    ref,
                    KEY_MISSING,
                    f"{where} ({ref.field}, {ref.purpose}) has no key {ref.key!r} "
                    f"(its keys: {have})",
                )
            )
    return out


def server_condition(refs: list[Ref], missing: list[Missing]) -> tuple[bool, str, str] | None:
    """(ok, reason, message) of the server's ``SecretsReady``; None when it mounts none."""
    if not refs:
        return None
    if not missing:
        found = ", ".join(f"{r.name}[{r.key}]" for r in refs)
        return True, "Found", f"every Secret key the receivers mount is there: {found}"
    return False, missing[0].reason, "; ".join(m.message for m in missing)


def effect(missing: list[Missing], held: bool) -> str:
    """What the missing Secrets do to the receivers, for the Ready condition's message."""
    if held:
        return (
            "the receivers that serve keep serving with the copy they mounted; their "
            "workload is held as it is until the Secret is back"
        )
    return "the receiver pods cannot start until it exists; they start when it does"


@dataclass(frozen=True)
class Assessment:
    """The mounted Secrets of one server: what it references, what is missing, and whether
    its workload is held as it is."""

    refs: list[Ref]
    missing: list[Missing]
    held: bool

    def condition(self) -> tuple[bool, str, str] | None:
        return server_condition(self.refs, self.missing)

    def ready_message(self, serving: str) -> str:
        """The server's Ready message while something is missing."""
        what = "; ".join(m.message for m in self.missing)
        return f"{what}; {effect(self.missing, self.held)}; {serving}"


def assess(
    namespace: str, spec: specs.TransportServerSpec, secrets: Iterable[Body], workload: Body | None
) -> Assessment:
    """``spec``'s mounted Secrets against those there. The workload is held when one is
    missing and some of its replicas serve: a changed pod template would roll them into
    pods that cannot start, and a deleted workload would take them down."""
    refs = references(spec)
    missing = check(namespace, refs, secrets)
    ready = int(((workload or {}).get("status") or {}).get("readyReplicas") or 0)
    return Assessment(refs, missing, bool(missing) and workload is not None and ready > 0)


def connector_condition(
    mechanisms: Iterable[AuthMechanism], refs: list[Ref], missing: list[Missing]
) -> tuple[bool, str, str] | None:
    """(ok, reason, message) of ``CredentialsReady`` as far as the mounted Secrets go, for a
    connector whose mechanisms need one of ``refs``; None when none of them does."""
    offered = set(mechanisms)
    needed = [r for r in refs if r.needed_by & offered]
    if not needed:
        return None
    mine = [m for m in missing if m.ref in needed]
    if not mine:
        found = ", ".join(f"{r.name}[{r.key}]" for r in needed)
        return True, "Configured", f"the Secret keys its mechanisms need are there: {found}"
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
