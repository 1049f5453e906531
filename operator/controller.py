"""The controller: informers feed a coalescing queue of servers; workers reconcile one server
at a time from the cache and write only what differs.

Events map to keys: a TransportServer or anything labelled with its name (its children and
pods) to that server; a ReceiveConnector to the server it names, before and after an edit;
an AcceptedDomain or a TLS Secret to every server of its namespace; any other Secret, or a
ConfigMap, to the servers that mount it (``secretrefs``; cached by its key names only). Each
namespace also has one key for the statuses that belong to no server. Workers take keys only
while this replica leads; a failure is shown in that server's status and retried with a
growing backoff, and never holds up another server."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import certs, informer, kube, metrics, queues, reconcile, resources, secretrefs, spool, trust
from .workqueue import Key, WorkQueue

log = logging.getLogger(__name__)
Body = dict[str, Any]
MANAGED = "app.kubernetes.io/managed-by=smtpgate-operator"
APPLIED = f"{resources.GROUP}/applied"
INSTANCE = "app.kubernetes.io/instance"
SECRET_KEYS = "SecretKeys"  # the cache of Secrets other than TLS ones, by key names only
CONFIG_MAP_KEYS = "ConfigMapKeys"  # the cache of ConfigMaps (krb5.conf), by key names only
MAX_RECHECK = 86400.0


class Controller:
    def __init__(
        self,
        api: kube.Api,
        namespaces: list[str],
        image: str,
        *,
        resync_seconds: float = 600,
        workers: int = 4,
        leading: Callable[[], bool] = lambda: True,
        self_signed_validity: dt.timedelta = certs.DEFAULT_VALIDITY,
    ) -> None:
        self.api, self.image, self.resync_seconds = api, image, resync_seconds
        self.self_signed_validity = self_signed_validity
        self.leading = leading
        self.queue = WorkQueue()
        self.stopping = threading.Event()
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._failures: dict[Key, int] = {}
        self._applied: dict[tuple[str, str, str], tuple[str, str]] = {}
        scopes: list[str | None] = list(namespaces) or [None]
        selectors = {
            kube.SECRET.kind: {"field_selector": "type=kubernetes.io/tls"},
            **{k.kind: {"label_selector": MANAGED} for k in (*kube.CHILD_KINDS, kube.POD)},
        }
        self.informers: dict[str, list[informer.Informer]] = {
            kind.kind: [
                informer.Informer(
                    api,
                    kind,
                    ns,
                    self.on_event,
                    label_selector=selectors.get(kind.kind, {}).get("label_selector", ""),
                    field_selector=selectors.get(kind.kind, {}).get("field_selector", ""),
                )
                for ns in scopes
            ]
            for kind in (
                kube.TRANSPORT_SERVER,
                kube.RECEIVE_CONNECTOR,
                kube.ACCEPTED_DOMAIN,
                kube.TRANSPORT_CONFIG,
                kube.SECRET,
                *kube.CHILD_KINDS,
                kube.POD,
            )
        }
        for name, kind, selector in (
            (SECRET_KEYS, kube.SECRET, secretrefs.FIELD_SELECTOR),
            (CONFIG_MAP_KEYS, kube.CONFIG_MAP, ""),
        ):
            self.informers[name] = [
                informer.Informer(
                    api,
                    kind,
                    ns,
                    self.on_mounted,
                    field_selector=selector,
                    transform=secretrefs.slim,
                    name=name,
                )
                for ns in scopes
            ]

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        for group in self.informers.values():
            for inf in group:
                inf.start(self.stopping)
        for i in range(self._workers):
            self._spawn(self._work, f"worker-{i}")
        self._spawn(self._resync, "resync")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, daemon=True, name=name)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        self.queue.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def synced(self) -> bool:
        return all(inf.synced.is_set() for group in self.informers.values() for inf in group)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) and all(
            inf.alive() for group in self.informers.values() for inf in group
        )

    def on_leading(self, leading: bool) -> None:
        metrics.LEADER.set(1 if leading else 0)
        if leading:
            self.enqueue_all()

    # -- the cache ------------------------------------------------------------------------
    def _items(self, kind: kube.Kind, namespace: str) -> list[Body]:
        return [b for inf in self.informers[kind.kind] for b in inf.items(namespace)]

    def _cached(self, kind_name: str, namespace: str, name: str) -> Body | None:
        for inf in self.informers[kind_name]:
            if (found := inf.get(namespace, name)) is not None:
                return found
        return None

    def _remember(self, body: Body) -> None:
        ns = body["metadata"].get("namespace") or ""
        for inf in self.informers[body["kind"]]:
            if inf.namespace in (None, ns):
                inf.put(body)

    def _servers(self, namespace: str) -> list[str]:
        return [b["metadata"]["name"] for b in self._items(kube.TRANSPORT_SERVER, namespace)]

    def snapshot(self, namespace: str, server: str | None = None) -> reconcile.Snapshot:
        by_server: dict[str, Body] = {}
        for kind in (kube.DEPLOYMENT, kube.STATEFUL_SET):
            for body in self._items(kind, namespace):
                owner = (body["metadata"].get("labels") or {}).get(INSTANCE)
                if owner and (owner not in by_server or body["kind"] == "StatefulSet"):
                    by_server[owner] = body
        pods: dict[str, list[Body]] = {}
        for body in self._items(kube.POD, namespace):
            owner = (body["metadata"].get("labels") or {}).get(INSTANCE)
            if owner:
                pods.setdefault(owner, []).append(body)
        serving: dict[str, frozenset[str]] = {}
        if server is not None:
            cm = self._cached("ConfigMap", namespace, resources.receiver_name(server))
            if cm is not None:
                serving[server] = _connector_names((cm.get("data") or {}).get("config.json") or "")
        configs = self._items(kube.TRANSPORT_CONFIG, namespace)
        return reconcile.Snapshot(
            namespace=namespace,
            servers=self._items(kube.TRANSPORT_SERVER, namespace),
            connectors=self._items(kube.RECEIVE_CONNECTOR, namespace),
            domains=self._items(kube.ACCEPTED_DOMAIN, namespace),
            secrets=self._items(kube.SECRET, namespace),
            mounted=[
                b
                for cache in (SECRET_KEYS, CONFIG_MAP_KEYS)
                for inf in self.informers[cache]
                for b in inf.items(namespace)
            ],
            workloads=by_server,
            pods=pods,
            serving=serving,
            transport_configs=configs,
            referenced=self._referenced(namespace, configs),
        )

    def _referenced(
        self, namespace: str, configs: list[Body]
    ) -> dict[tuple[str, str], Body | None]:
        """The Secrets and ConfigMaps a TransportConfig names that the cache does not hold
        (a Secret of another type than kubernetes.io/tls, a trust bundle's ConfigMap): read
        at each reconcile, so a change reaches the configs by the next resync at the latest."""
        found: dict[tuple[str, str], Body | None] = {}
        for kind, name in sorted(trust.references(configs)):
            if kind == "Secret" and self._cached("Secret", namespace, name) is not None:
                continue
            found[(kind, name)] = self.api.get(kube.BY_KIND[kind], namespace, name)
        return found

    # -- events to keys -------------------------------------------------------------------
    def on_event(self, kind: str, old: Body | None, new: Body | None) -> None:
        body = new or old
        assert body is not None
        ns = body["metadata"].get("namespace") or ""
        if kind == "TransportServer":
            self.queue.add(Key(ns, body["metadata"]["name"]))
            self.queue.add(Key(ns, None))
            if _principals(old) != _principals(new):  # the others know it by them
                for server in self._servers(ns):
                    self.queue.add(Key(ns, server))
        elif kind == "ReceiveConnector":
            for server in {reconcile.server_of(b) for b in (old, new) if b is not None}:
                if server:
                    self.queue.add(Key(ns, server))
            self.queue.add(Key(ns, None))
        elif kind in ("AcceptedDomain", "Secret", "TransportConfig"):
            # Accepted domains, certificates and the organisation are in every server's config.
            for server in self._servers(ns):
                self.queue.add(Key(ns, server))
            self.queue.add(Key(ns, None))
        else:
            owner = (body["metadata"].get("labels") or {}).get(INSTANCE)
            if owner:
                self.queue.add(Key(ns, owner))

    def on_mounted(self, kind: str, old: Body | None, new: Body | None) -> None:
        """A Secret other than a TLS one, or a ConfigMap: the servers that mount it (it
        appeared, went, or its keys changed)."""
        body = new or old
        assert body is not None
        ns, name = body["metadata"].get("namespace") or "", body["metadata"]["name"]
        for server in self._items(kube.TRANSPORT_SERVER, ns):
            if name in secretrefs.names(server, kind):
                self.queue.add(Key(ns, server["metadata"]["name"]))

    def enqueue_all(self, delay: float = 0.0) -> None:
        namespaces = {
            ns
            for kind in ("TransportServer", "ReceiveConnector", "AcceptedDomain", "TransportConfig")
            for inf in self.informers[kind]
            for ns in inf.namespaces()
        }
        for ns in sorted(namespaces):
            self.queue.add(Key(ns, None), delay=delay)
            for server in self._servers(ns):
                self.queue.add(Key(ns, server), delay=delay)

    def _resync(self) -> None:
        """Level-triggered safety net, from the cache: a reconcile that finds everything as
        it should be writes nothing."""
        while not self.stopping.wait(self.resync_seconds):
            if self.leading() and self.synced():
                self.enqueue_all()

    # -- workers --------------------------------------------------------------------------
    def _work(self) -> None:
        while not self.stopping.is_set():
            if not (self.leading() and self.synced()):
                self.stopping.wait(0.2)
                continue
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            started = time.monotonic()
            scope = "namespace" if key.server is None else "server"
            try:
                recheck = self.reconcile(key)
            except kube.NotLeading:
                metrics.RECONCILES.labels(scope=scope, result="skipped").inc()
                self.queue.add(key, delay=1.0)
            except Exception as err:  # noqa: BLE001 - one key's failure is that key's alone
                metrics.RECONCILES.labels(scope=scope, result="error").inc()
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = kube.backoff(failures)
                if isinstance(err, kube.ApiError | ReconcileFailed):
                    log.warning(
                        "reconcile failed (attempt %d, again in %.0fs): %s",
                        failures,
                        delay,
                        err,
                        extra={"object": _name(key)},
                    )
                else:
                    log.exception("reconcile failed", extra={"object": _name(key)})
                self.queue.add(key, delay=delay)
            else:
                metrics.RECONCILES.labels(scope=scope, result="ok").inc()
                self._failures.pop(key, None)
                if recheck is not None:
                    self.queue.add(key, delay=min(recheck, MAX_RECHECK))
            finally:
                metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
                self.queue.done(key)

    # -- reconcile ------------------------------------------------------------------------
    def reconcile(self, key: Key) -> float | None:
        """One key; returns seconds after which it should be looked at again, if any."""
        if key.server is None:
            plan = reconcile.plan_namespace(self.snapshot(key.namespace))
            for name, status in plan.domain_status.items():
                self._write_status("AcceptedDomain", key.namespace, name, status)
            for name, status in plan.connector_status.items():
                self._write_status("ReceiveConnector", key.namespace, name, status)
            for name, status in plan.config_status.items():
                self._write_status("TransportConfig", key.namespace, name, status)
            return None
        snapshot = self.snapshot(key.namespace, key.server)
        self._probe_queues(snapshot, key.server)
        server_plan = reconcile.plan_server(
            snapshot,
            key.server,
            image=self.image,
            now=dt.datetime.now(dt.UTC),
            self_signed_validity=self.self_signed_validity,
        )
        if server_plan is None:
            return None  # gone: the garbage collector takes its children
        for body in server_plan.create:
            created = self.api.create(body)
            metrics.WRITES.labels(kind="ReceiveConnector", what="create").inc()
            if created is not None:
                self._remember(created)
                log.info(
                    "created default connector %s",
                    body["metadata"]["name"],
                    extra={"object": _name(key)},
                )
        failure = None
        if server_plan.children is not None:
            failure = self._write_children(key, server_plan.children, server_plan.held)
            if failure is not None:
                reconcile.failed(server_plan, failure)
        self._write_status("TransportServer", key.namespace, key.server, server_plan.status)
        for name, status in server_plan.connector_status.items():
            self._write_status("ReceiveConnector", key.namespace, name, status)
        if failure is not None:
            raise ReconcileFailed(failure)
        return server_plan.recheck_after

    def _probe_queues(self, snapshot: reconcile.Snapshot, server: str) -> None:
        """Each ready pod's spool, for a server whose next hop spools (Maildir,
        StoreAndForward), and its queue in StoreAndForward mode (over the pod network, a
        short timeout each)."""
        body = next((b for b in snapshot.servers if b["metadata"]["name"] == server), None)
        next_hop = ((body or {}).get("spec") or {}).get("nextHop") or {}
        pods = snapshot.pods.get(server, [])
        store_and_forward = next_hop.get("mode") == "StoreAndForward"
        if store_and_forward or next_hop.get("type", "Maildir") == "Maildir":
            spools = [spool.probe(pod) for pod in pods]
            snapshot.spools[server] = [r for r in spools if r is not None]
        if store_and_forward:
            reports = [queues.probe(pod) for pod in pods]
            snapshot.queues[server] = [r for r in reports if r is not None]

    def _write_children(
        self, key: Key, children: list[Body], held: frozenset[tuple[str, str]] = frozenset()
    ) -> str | None:
        """Apply what differs; delete what the server no longer has, unless some apply
        failed or it is ``held`` (kind, name) as it is. Returns what failed, for the server's
        status."""
        failures = []
        for child in children:
            try:
                self._apply(child)
            except kube.ApiError as err:
                if err.transient:
                    raise
                failures.append(f"{child['kind']} {child['metadata']['name']}: {err.detail()}")
        if failures:
            return "; ".join(failures)[:1000]
        keep = {(c["kind"], c["metadata"]["name"]) for c in children} | held
        for kind in kube.CHILD_KINDS:
            for body in self._items(kind, key.namespace):
                meta = body["metadata"]
                if (meta.get("labels") or {}).get(INSTANCE) != key.server:
                    continue
                if (kind.kind, meta["name"]) in keep or meta.get("deletionTimestamp"):
                    continue
                self.api.delete(kind, key.namespace, meta["name"])
                metrics.WRITES.labels(kind=kind.kind, what="delete").inc()
                for inf in self.informers[kind.kind]:
                    inf.forget(key.namespace, meta["name"])
                self._applied.pop((kind.kind, key.namespace, meta["name"]), None)
                log.info("deleted %s %s", kind.kind, meta["name"], extra={"object": _name(key)})
        return None

    def _apply(self, child: Body) -> bool:
        """Server-side apply unless the cached object already is what we would write."""
        digest = hashlib.sha256(json.dumps(child, sort_keys=True).encode()).hexdigest()[:16]
        meta = {
            **child["metadata"],
            "annotations": {**(child["metadata"].get("annotations") or {}), APPLIED: digest},
        }
        child = {**child, "metadata": meta}
        current = self._cached(child["kind"], meta["namespace"], meta["name"])
        if current is not None:
            same_intent = (current["metadata"].get("annotations") or {}).get(APPLIED) == digest
            if same_intent and reconcile.contains(current, child):
                return False
            ident = (child["kind"], meta["namespace"], meta["name"])
            if self._applied.get(ident) == (current["metadata"].get("resourceVersion"), digest):
                return False  # applied already; the API server normalises some field
        result = self.api.apply(child)
        metrics.WRITES.labels(kind=child["kind"], what="apply").inc()
        self._applied[(child["kind"], meta["namespace"], meta["name"])] = (
            result["metadata"].get("resourceVersion", ""),
            digest,
        )
        self._remember(result)
        return True

    def _write_status(self, kind: str, namespace: str, name: str, desired: Body) -> None:
        current = self._cached(kind, namespace, name)
        if current is None:
            return
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = reconcile.merged_status(current.get("status"), desired, now)
        if patch is None:
            return
        result = self.api.patch_status(kube.BY_KIND[kind], namespace, name, patch)
        metrics.WRITES.labels(kind=kind, what="status").inc()
        if result is None:
            return
        self._remember(result)
        for cond in reconcile.transitions(current.get("status"), patch):
            positive = cond["status"] == "True" and cond["type"] != "ConnectorsRejected"
            self.api.event(
                current,
                "Normal" if positive else "Warning",
                cond["reason"],
                f"{cond['type']}: {cond['message']}",
            )
            metrics.WRITES.labels(kind=kind, what="event").inc()


class ReconcileFailed(Exception):
    """Some of a server's objects could not be written; its status says which and why."""


def _name(key: Key) -> str:
    return f"{key.namespace}/{key.server}" if key.server else key.namespace


@functools.lru_cache(maxsize=256)
def _connector_names(config_json: str) -> frozenset[str]:
    try:
        return frozenset(c["name"] for c in json.loads(config_json).get("connectors", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        return frozenset()


def _principals(body: Body | None) -> Any:
    """What the namespace's other servers know a TransportServer by: its role and Kerberos
    service principals (``integrated.organisation``)."""
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    spec = body.get("spec") or {}
    return spec.get("role"), (spec.get("kerberos") or {}).get("servicePrincipals")
