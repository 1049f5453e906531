"""kopf handlers: every change in a namespace reconciles that namespace, level-triggered."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from . import kube, reconcile, resources

log = logging.getLogger(__name__)
GROUP, VERSION = resources.GROUP, "v1alpha1"
RECEIVER_IMAGE = os.environ.get("SMTPGATE_RECEIVER_IMAGE", "ghcr.io/smtpgate/receiver:0.1.0")
RESYNC_SECONDS = float(os.environ.get("SMTPGATE_RESYNC_SECONDS", "30"))

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_kube: kube.Kube | None = None


def _client() -> kube.Kube:
    global _kube
    if _kube is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        _kube = kube.Kube(client.ApiClient())
    return _kube


def _lock(namespace: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(namespace, threading.Lock())


def reconcile_namespace(namespace: str) -> None:
    """Bring one namespace's smtpgate children and statuses to what its resources say."""
    api = _client()
    with _lock(namespace):
        try:
            snapshot = api.snapshot(namespace)
            plan = reconcile.plan(snapshot, image=RECEIVER_IMAGE, now=dt.datetime.now(dt.UTC))
            for body in plan.create:
                if api.create(body):
                    log.info("created default connector %s/%s", namespace, body["metadata"]["name"])
            for child in plan.children:
                if api.apply(child):
                    log.info(
                        "applied %s %s/%s", child["kind"], namespace, child["metadata"]["name"]
                    )
            keep: dict[tuple[str, str], set[str]] = {}
            for child in plan.children:
                keep.setdefault((child["apiVersion"], child["kind"]), set()).add(
                    child["metadata"]["name"]
                )
            for api_version, kind in (
                ("v1", "ConfigMap"),
                ("v1", "Service"),
                ("apps/v1", "Deployment"),
                ("apps/v1", "StatefulSet"),
            ):
                api.delete_stale(namespace, kind, api_version, keep.get((api_version, kind), set()))
            current = (
                {
                    ("TransportServer", b["metadata"]["name"]): b.get("status")
                    for b in snapshot.servers
                }
                | {
                    ("ReceiveConnector", b["metadata"]["name"]): b.get("status")
                    for b in snapshot.connectors
                }
                | {
                    ("AcceptedDomain", b["metadata"]["name"]): b.get("status")
                    for b in snapshot.domains
                }
            )
            for kind, statuses in (
                ("TransportServer", plan.server_status),
                ("ReceiveConnector", plan.connector_status),
                ("AcceptedDomain", plan.domain_status),
            ):
                for name, status in statuses.items():
                    api.patch_status(kind, namespace, name, current.get((kind, name)), status)
        except ApiException as err:
            if err.status in (409, 429) or err.status >= 500:
                raise kopf.TemporaryError(
                    f"API answered {err.status}: {err.reason}: {str(err.body)[:500]}", delay=2
                ) from err
            raise
        except HTTPError as err:
            raise kopf.TemporaryError(f"API unreachable: {err}", delay=2) from err


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "smtpgate.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="smtpgate.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="smtpgate.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True  # leadership is the Lease's job (leader.py)
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5]


def _on_change(namespace: str | None, **_: Any) -> None:
    if namespace:
        _seen.add(namespace)
        try:
            reconcile_namespace(namespace)
        except kopf.TemporaryError as err:
            log.warning("reconcile of %s postponed: %s", namespace, err)


for _plural in ("transportservers", "receiveconnectors", "accepteddomains"):
    kopf.on.event(GROUP, VERSION, _plural)(_on_change)

kopf.on.event("", "v1", "secrets", field="type", value="kubernetes.io/tls")(_on_change)
for _workload in ("deployments", "statefulsets"):
    kopf.on.event(
        "apps", "v1", _workload, labels={"app.kubernetes.io/managed-by": "smtpgate-operator"}
    )(_on_change)


_seen: set[str] = set()
_resync: asyncio.Task[None] | None = None


async def _resync_forever() -> None:
    """Level-triggered safety net: certificates expire, events can be missed and the API
    server can be away for a while. (Not a kopf timer: those put a finalizer on every
    TransportServer, and nothing here needs cleanup.)"""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        for namespace in sorted(_seen):
            try:
                await asyncio.to_thread(reconcile_namespace, namespace)
            except Exception as err:  # noqa: BLE001 - the next round tries again
                log.warning("resync of %s failed: %s", namespace, err)


@kopf.on.startup()
async def start_resync(**_: Any) -> None:
    global _resync
    _resync = asyncio.create_task(_resync_forever())


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    if _resync is not None:
        _resync.cancel()
