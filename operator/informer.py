"""A list-and-watch cache of one kind, with selectors applied by the API server.

Each informer lists its objects, then watches from that list's resource version, keeping
every object in memory (without managedFields) by namespace and name. A watch that ends is
resumed; one whose version expired (410) lists again and reports the difference. Any
failure waits with a growing backoff and tries again, forever: an API server that is away
for minutes delays the cache, it does not stop it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from . import kube, metrics

log = logging.getLogger(__name__)
Body = dict[str, Any]
Handler = Callable[[str, Body | None, Body | None], None]


def _version(body: Body) -> int | None:
    try:
        return int(body["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def _slim(body: Body) -> Body:
    body.get("metadata", {}).pop("managedFields", None)
    return body


Transform = Callable[[Body], Body]


class Informer:
    """One kind in one namespace (or all), kept current from a watch."""

    def __init__(
        self,
        api: kube.Api,
        kind: kube.Kind,
        namespace: str | None,
        on_event: Handler,
        label_selector: str = "",
        field_selector: str = "",
        *,
        transform: Transform = _slim,
        name: str = "",
    ) -> None:
        """``transform`` makes what the cache keeps of an object (by default all of it but
        its managedFields); ``name`` tells this cache from another of the same kind in
        metrics and logs."""
        self.api, self.kind, self.namespace = api, kind, namespace
        self.name = name or kind.kind
        self._slim = transform
        self.selectors = {"labelSelector": label_selector, "fieldSelector": field_selector}
        self.on_event = on_event
        self.synced = threading.Event()
        self._store: dict[str, dict[str, Body]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- reading the cache ----------------------------------------------------------------
    def items(self, namespace: str) -> list[Body]:
        with self._lock:
            return list(self._store.get(namespace, {}).values())

    def get(self, namespace: str, name: str) -> Body | None:
        with self._lock:
            return self._store.get(namespace, {}).get(name)

    def namespaces(self) -> list[str]:
        with self._lock:
            return [ns for ns, items in self._store.items() if items]

    def count(self) -> int:
        with self._lock:
            return sum(len(items) for items in self._store.values())

    # -- writing the cache ----------------------------------------------------------------
    def put(self, body: Body) -> None:
        """Keep what a write of ours returned, so that the next reconcile does not write
        it again before the watch brings it (a newer version always wins)."""
        self._upsert(self._slim(body), notify=False)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._store.get(namespace, {}).pop(name, None)

    def _upsert(self, body: Body, notify: bool = True) -> None:
        meta = body["metadata"]
        ns, name = meta.get("namespace") or "", meta["name"]
        with self._lock:
            old = self._store.get(ns, {}).get(name)
            new_v, old_v = _version(body), (_version(old) if old else None)
            if old is not None and new_v is not None and old_v is not None and new_v < old_v:
                return
            self._store.setdefault(ns, {})[name] = body
        if notify and (old is None or _version(old) != new_v):
            self.on_event(self.kind.kind, old, body)

    def _remove(self, body: Body) -> None:
        meta = body["metadata"]
        ns = meta.get("namespace") or ""
        with self._lock:
            old = self._store.get(ns, {}).pop(meta["name"], None)
        self.on_event(self.kind.kind, old or body, None)

    # -- the loop -------------------------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(
            target=self._run,
            args=(stop,),
            daemon=True,
            name=f"informer-{self.kind.plural}-{self.namespace or 'all'}",
        )
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _relist(self) -> str:
        items, version = self.api.list(self.kind, self.namespace, self.selectors, self._slim)
        fresh: dict[str, dict[str, Body]] = {}
        for item in items:
            meta = item["metadata"]
            fresh.setdefault(meta.get("namespace") or "", {})[meta["name"]] = item
        with self._lock:
            old_store, self._store = self._store, fresh
        for ns, objs in fresh.items():
            for name, body in objs.items():
                old = old_store.get(ns, {}).get(name)
                if old is None or _version(old) != _version(body):
                    self.on_event(self.kind.kind, old, body)
        for ns, objs in old_store.items():
            for name, body in objs.items():
                if name not in fresh.get(ns, {}):
                    self.on_event(self.kind.kind, body, None)
        metrics.WATCHED_OBJECTS.labels(kind=self.name).set(self.count())
        return version

    def _run(self, stop: threading.Event) -> None:
        failures = 0
        version = ""
        while not stop.is_set():
            try:
                if not version:
                    version = self._relist()
                    self.synced.set()
                for event in self.api.watch(self.kind, self.namespace, self.selectors, version):
                    if stop.is_set():
                        return
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = ""  # too old: list again
                            break
                        raise kube.ApiError(int(obj.get("code") or 0), str(obj.get("message")))
                    version = obj.get("metadata", {}).get("resourceVersion") or version
                    if kind == "BOOKMARK":
                        continue
                    obj["apiVersion"], obj["kind"] = self.kind.api_version, self.kind.kind
                    if kind == "DELETED":
                        self._remove(obj)
                    else:
                        self._upsert(self._slim(obj))
                    failures = 0
                metrics.WATCHED_OBJECTS.labels(kind=self.name).set(self.count())
            except kube.ApiError as err:
                failures += 1
                if err.status == 410:
                    version = ""
                metrics.WATCH_RESTARTS.labels(kind=self.name).inc()
                delay = kube.backoff(failures, cap=30)
                log.warning(
                    "watch of %s in %s: %s; again in %.0fs",
                    self.kind.plural,
                    self.namespace or "all namespaces",
                    err,
                    delay,
                )
                if stop.wait(delay):
                    return
            except Exception:  # noqa: BLE001 - a bug in a handler must not end the cache
                failures += 1
                log.exception("watch of %s failed", self.kind.plural)
                version = ""
                if stop.wait(kube.backoff(failures, cap=30)):
                    return
