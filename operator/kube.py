"""The one module that talks to the Kubernetes API: raw JSON requests with timeouts, list and
watch for the informers, and the writes (server-side apply, create, delete, status, Events),
each of which passes the leadership gate first.

Errors::

    ApiError            the API answered with an error status, or could not be reached (0)
    NotLeading          a write was asked for while this replica does not hold the Lease
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError

from . import metrics, resources

log = logging.getLogger(__name__)
FIELD_MANAGER = "smtpgate-operator"
Body = dict[str, Any]
# (connect, read) seconds for ordinary requests; a stopped API server must not hang a worker.
TIMEOUT = (5.0, 30.0)
WATCH_SECONDS = 290  # the API server closes the watch after this; the read timeout is longer


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(
            f"API answered {status}: {reason}" if status else f"API unreachable: {reason}"
        )
        self.status, self.reason, self.body = status, reason, body

    @property
    def transient(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500

    def detail(self) -> str:
        """The API's own message (for a 422, the field and the rule), else the reason."""
        try:
            return str(json.loads(self.body).get("message") or self.reason)[:600]
        except (ValueError, AttributeError):
            return self.reason


class NotLeading(Exception):
    """A write was refused because this replica does not lead."""


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API."""

    api_version: str
    kind: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        return base + (f"/{sub}" if sub else "")


TRANSPORT_SERVER = Kind(resources.API_VERSION, "TransportServer", "transportservers")
RECEIVE_CONNECTOR = Kind(resources.API_VERSION, "ReceiveConnector", "receiveconnectors")
ACCEPTED_DOMAIN = Kind(resources.API_VERSION, "AcceptedDomain", "accepteddomains")
TRANSPORT_CONFIG = Kind(resources.API_VERSION, "TransportConfig", "transportconfigs")
SECRET = Kind("v1", "Secret", "secrets")
CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps")
SERVICE = Kind("v1", "Service", "services")
POD = Kind("v1", "Pod", "pods")
EVENT = Kind("v1", "Event", "events")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
STATEFUL_SET = Kind("apps/v1", "StatefulSet", "statefulsets")
DISRUPTION_BUDGET = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
BY_KIND = {
    k.kind: k
    for k in (
        TRANSPORT_SERVER,
        RECEIVE_CONNECTOR,
        ACCEPTED_DOMAIN,
        TRANSPORT_CONFIG,
        SECRET,
        CONFIG_MAP,
        SERVICE,
        POD,
        DEPLOYMENT,
        STATEFUL_SET,
        DISRUPTION_BUDGET,
    )
}
CHILD_KINDS = (CONFIG_MAP, SERVICE, DEPLOYMENT, STATEFUL_SET, DISRUPTION_BUDGET)


class Api:
    """JSON over the client's connection pool and credentials; nothing is deserialised into
    model classes. Every write asks ``gate`` first."""

    def __init__(
        self, api: client.ApiClient, gate: Callable[[], bool] | None = None, agent: str = ""
    ) -> None:
        self.api = api
        self.gate = gate
        if agent:
            api.user_agent = agent

    # -- plumbing -------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: Any = TIMEOUT,
        stream: bool = False,
    ) -> Any:
        write = method != "GET"
        if write and self.gate is not None and not self.gate():
            raise NotLeading(f"{method} {path}")
        verb = method if not write else _verb(method, content_type)
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            _, url, headers, serialised, _ = self.api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(
                method, url, header_params=headers, body=serialised, _request_timeout=timeout
            )
        except ApiException as err:  # the client turns connection failures into status 0
            metrics.API_REQUESTS.labels(verb=verb, code="0").inc()
            raise ApiError(0, str(err.reason or err)[:300]) from err
        except (HTTPError, OSError) as err:
            metrics.API_REQUESTS.labels(verb=verb, code="0").inc()
            raise ApiError(0, str(err)[:300]) from err
        metrics.API_REQUESTS.labels(verb=verb, code=str(response.status)).inc()
        if stream and response.status < 400:
            return response.response
        try:
            data = response.read()
        except (HTTPError, OSError) as err:
            raise ApiError(0, str(err)[:300]) from err
        if response.status >= 400:
            raise ApiError(response.status, response.reason or "", data.decode(errors="replace"))
        return json.loads(data) if data else None

    # -- reads ----------------------------------------------------------------------------
    def get(self, kind: Kind, namespace: str, name: str) -> Body | None:
        """One object, or None when it does not exist."""
        try:
            body = self.request("GET", kind.path(namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        if isinstance(body, dict):
            body["apiVersion"], body["kind"] = kind.api_version, kind.kind
        return body if isinstance(body, dict) else None

    def list(
        self,
        kind: Kind,
        namespace: str | None,
        selectors: dict[str, str],
        transform: Callable[[Body], Body] | None = None,
    ) -> tuple[list[Body], str]:
        """Every object of ``kind``, a page of 500 at a time, and the list's version;
        ``transform`` makes what is kept of each as its page arrives, so that a cache of
        key names never holds a whole namespace's values at once."""
        items: list[Body] = []
        query = [(k, v) for k, v in selectors.items() if v]
        token = ""
        while True:
            page = self.request(
                "GET",
                kind.path(namespace),
                query=[*query, ("limit", "500"), *([("continue", token)] if token else [])],
                timeout=(5.0, 60.0),
            )
            for item in page.get("items") or []:
                item["apiVersion"], item["kind"] = kind.api_version, kind.kind
                items.append(item if transform is None else transform(item))
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items, page["metadata"]["resourceVersion"]
            del page  # one page of whole objects at a time

    def watch(
        self, kind: Kind, namespace: str | None, selectors: dict[str, str], since: str
    ) -> Iterator[Body]:
        """Events after resource version ``since`` until the API server ends the watch."""
        query = [(k, v) for k, v in selectors.items() if v] + [
            ("watch", "true"),
            ("resourceVersion", since),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(WATCH_SECONDS)),
        ]
        response = self.request(
            "GET", kind.path(namespace), query=query, timeout=(5.0, WATCH_SECONDS + 30), stream=True
        )
        try:
            for line in iter_resp_lines(response):
                if line:
                    yield json.loads(line)
        except (HTTPError, OSError) as err:
            raise ApiError(0, f"watch broke: {err}"[:300]) from err
        finally:
            response.release_conn()

    # -- writes ---------------------------------------------------------------------------
    def apply(self, body: Body) -> Body:
        """Server-side apply as the operator's field manager."""
        kind, meta = BY_KIND[body["kind"]], body["metadata"]
        result: Body = self.request(
            "PATCH",
            kind.path(meta["namespace"], meta["name"]),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=body,
            content_type="application/apply-patch+yaml",
        )
        return result

    def create(self, body: Body) -> Body | None:
        """Create; None when it exists already."""
        kind = BY_KIND[body["kind"]]
        try:
            result: Body = self.request(
                "POST",
                kind.path(body["metadata"]["namespace"]),
                query=[("fieldManager", FIELD_MANAGER)],
                body=body,
            )
            return result
        except ApiError as err:
            if err.status == 409:
                return None
            raise

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        try:
            self.request(
                "DELETE",
                kind.path(namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiError as err:
            if err.status != 404:
                raise

    def patch_status(self, kind: Kind, namespace: str, name: str, status: Body) -> Body | None:
        """Merge-patch ``status``; None when the object is gone."""
        try:
            result: Body = self.request(
                "PATCH",
                kind.path(namespace, name, "status"),
                body={"status": status},
                content_type="application/merge-patch+json",
            )
            return result
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def event(self, obj: Body, event_type: str, reason: str, message: str) -> None:
        """An Event about ``obj``, with its uid so that ``kubectl describe`` shows it."""
        meta = obj["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": FIELD_MANAGER},
        }
        try:
            self.request("POST", EVENT.path(meta["namespace"]), body=body)
        except ApiError as err:
            log.debug("event not posted: %s", err)


def _verb(method: str, content_type: str) -> str:
    if method == "PATCH" and "apply-patch" in content_type:
        return "APPLY"
    return method


def backoff(failures: int, cap: float = 300.0) -> float:
    """Seconds to wait after ``failures`` consecutive failures: 1, 2, 4, ... up to ``cap``."""
    return float(min(cap, 2 ** max(0, failures - 1)))
