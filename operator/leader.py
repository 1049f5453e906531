"""Leadership through a coordination.k8s.io Lease: only the holder reconciles, so more than
one operator replica is safe. A replica that loses the Lease exits and is restarted."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Lease:
    """Acquire and renew one Lease."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str = "smtpgate-operator",
        duration: int = 15,
        identity: str | None = None,
    ) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace, self.name, self.duration = namespace, name, duration
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self.lost = threading.Event()

    def _try(self) -> bool:
        now = _now()
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.duration,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            try:
                self.coordination.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as create_err:
                if create_err.status == 409:
                    return False
                raise
        spec = lease.spec
        renewed = spec.renew_time or spec.acquire_time or now - dt.timedelta(days=1)
        expired = renewed + dt.timedelta(seconds=spec.lease_duration_seconds or self.duration) < now
        if spec.holder_identity not in (self.identity, None) and not expired:
            return False
        if spec.holder_identity != self.identity:
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.acquire_time = now
        spec.holder_identity, spec.renew_time = self.identity, now
        spec.lease_duration_seconds = self.duration
        try:
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise

    def acquire(self) -> None:
        """Block until this replica holds the Lease, then keep renewing it in the background."""
        while True:
            try:
                if self._try():
                    break
            except ApiException as err:
                log.warning("lease: %s", err.reason)
            time.sleep(max(1, self.duration // 3))
        log.info("leading as %s", self.identity)
        threading.Thread(target=self._renew, daemon=True, name="lease-renewal").start()

    def _renew(self) -> None:
        last_ok = time.monotonic()
        while not self.lost.is_set():
            time.sleep(max(1, self.duration // 3))
            try:
                if self._try():
                    last_ok = time.monotonic()
                    continue
            except ApiException as err:
                log.warning("lease renewal: %s", err.reason)
            except Exception as err:  # noqa: BLE001 - an unreachable API server is a lost renewal
                log.warning("lease renewal: %s", err)
            if time.monotonic() - last_ok > self.duration:
                log.error("lease lost; stopping")
                self.lost.set()
