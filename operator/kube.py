"""The one module that talks to the Kubernetes API: read a namespace, apply children with
server-side apply, patch status only when it changed, and post Events."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

from . import reconcile, resources

log = logging.getLogger(__name__)
FIELD_MANAGER = "smtpgate-operator"
Body = dict[str, Any]
KINDS = {
    "TransportServer": (resources.API_VERSION, "TransportServer"),
    "ReceiveConnector": (resources.API_VERSION, "ReceiveConnector"),
    "AcceptedDomain": (resources.API_VERSION, "AcceptedDomain"),
}


class Kube:
    """A thin layer over the dynamic client."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.dynamic = DynamicClient(api)
        self.core = client.CoreV1Api(api)
        self._resources: dict[tuple[str, str], Any] = {}

    def resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        if key not in self._resources:
            self._resources[key] = self.dynamic.resources.get(api_version=api_version, kind=kind)
        return self._resources[key]

    def list(self, api_version: str, kind: str, namespace: str, **kwargs: Any) -> list[Body]:
        items = (
            self.resource(api_version, kind).get(namespace=namespace, **kwargs).to_dict()["items"]
        )
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def snapshot(self, namespace: str) -> reconcile.Snapshot:
        servers = self.list(*KINDS["TransportServer"], namespace)
        workloads: dict[str, Body] = {}
        for kind in ("Deployment", "StatefulSet"):
            for item in self.list(
                "apps/v1",
                kind,
                namespace,
                label_selector="app.kubernetes.io/managed-by=smtpgate-operator",
            ):
                server = item["metadata"].get("labels", {}).get("app.kubernetes.io/instance")
                if server:
                    workloads[server] = item
        return reconcile.Snapshot(
            namespace=namespace,
            servers=servers,
            connectors=self.list(*KINDS["ReceiveConnector"], namespace),
            domains=self.list(*KINDS["AcceptedDomain"], namespace),
            secrets=self.list("v1", "Secret", namespace, field_selector="type=kubernetes.io/tls"),
            workloads=workloads,
        )

    def apply(self, body: Body) -> bool:
        """Server-side apply; True when the object changed."""
        resource = self.resource(body["apiVersion"], body["kind"])
        meta = body["metadata"]
        try:
            before = resource.get(
                name=meta["name"], namespace=meta["namespace"]
            ).metadata.resourceVersion
        except NotFoundError:
            before = None
        after = resource.server_side_apply(
            body=body,
            name=meta["name"],
            namespace=meta["namespace"],
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        ).metadata.resourceVersion
        return before != after

    def create(self, body: Body) -> bool:
        resource = self.resource(body["apiVersion"], body["kind"])
        try:
            resource.create(body=body, namespace=body["metadata"]["namespace"])
            return True
        except ConflictError:
            return False

    def delete_stale(self, namespace: str, kind: str, api_version: str, keep: set[str]) -> None:
        """Remove children of ours that the plan no longer has (a workload whose kind changed,
        a Service of a binding address that is gone)."""
        for item in self.list(
            api_version,
            kind,
            namespace,
            label_selector="app.kubernetes.io/managed-by=smtpgate-operator",
        ):
            name = item["metadata"]["name"]
            if name not in keep:
                with contextlib.suppress(NotFoundError):
                    self.resource(api_version, kind).delete(name=name, namespace=namespace)

    def patch_status(
        self, kind: str, namespace: str, name: str, current: Body | None, desired: Body
    ) -> bool:
        """Write ``desired`` as status when it differs from ``current``, keeping each
        condition's lastTransitionTime while its status stays the same. True when written."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        old_conditions = {c["type"]: c for c in (current or {}).get("conditions") or []}
        merged = dict(desired)
        if "conditions" in desired:
            merged["conditions"] = []
            for cond in desired["conditions"]:
                old = old_conditions.get(cond["type"])
                stamp = (
                    old.get("lastTransitionTime")
                    if old and old.get("status") == cond["status"]
                    else now
                )
                merged["conditions"].append({**cond, "lastTransitionTime": stamp or now})
        gone = {key: None for key in (current or {}) if key not in merged}
        if not gone and _same(current or {}, merged):
            return False
        resource = self.resource(*KINDS[kind])
        try:
            resource.status.patch(
                body={"status": {**merged, **gone}},
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
            )
        except NotFoundError:
            return False
        for cond in merged.get("conditions", []):
            old = old_conditions.get(cond["type"])
            if (
                old is None
                or old.get("status") != cond["status"]
                or old.get("reason") != cond["reason"]
            ):
                self.event(kind, namespace, name, cond)
        return True

    def event(self, kind: str, namespace: str, name: str, cond: Body) -> None:
        positive = cond["status"] == "True" or cond["type"] == "ConnectorsRejected"
        event_type = "Normal" if positive and cond["type"] != "ConnectorsRejected" else "Warning"
        now = dt.datetime.now(dt.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
            involved_object=client.V1ObjectReference(
                api_version=resources.API_VERSION, kind=kind, name=name, namespace=namespace
            ),
            reason=cond["reason"],
            message=f"{cond['type']}: {cond['message']}"[:1024],
            type=event_type,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="smtpgate-operator"),
        )
        try:
            self.core.create_namespaced_event(namespace, body)
        except ApiException as err:
            log.debug("event not posted: %s", err.reason)


def _same(current: Body, desired: Body) -> bool:
    return all(current.get(key) == value for key, value in desired.items())
