"""Leadership through a coordination.k8s.io Lease, as client-go's leaderelection does it.

Only the holder writes. A replica leads while its last successful renewal is younger than
the renew deadline, which is shorter than the lease duration: a leader that cannot renew
(frozen, partitioned, or the API server away) stops writing before any other replica may
take the Lease. Expiry of another holder's Lease is judged by when this replica last saw
the record change, on its own monotonic clock, never by comparing wall clocks. A replica
that loses the Lease goes back to waiting for it; shutdown releases it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class Timing:
    """client-go's defaults: 15 s lease, 10 s renew deadline, 2 s between tries."""

    lease_seconds: float = 15
    renew_deadline_seconds: float = 10
    retry_seconds: float = 2

    def __post_init__(self) -> None:
        if not self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError("retry < renew deadline < lease duration is required")


class Lease:
    """Acquire, renew and release one Lease from a background thread."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str = "smtpgate-operator",
        timing: Timing | None = None,
        identity: str | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace, self.name = namespace, name
        self.timing = timing or Timing()
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self.on_change = on_change
        self._renewed_at: float | None = None  # monotonic time of our last successful write
        self._observed: tuple[str | None, str | None] | None = None  # holder, renewTime
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_leading = False

    # -- the question everyone asks -------------------------------------------------------
    def leading(self) -> bool:
        """True while this replica may write: it holds the Lease and renewed it within the
        renew deadline (measured on this process's monotonic clock)."""
        renewed = self._renewed_at
        return (
            renewed is not None
            and not self._stop.is_set()
            and time.monotonic() - renewed < self.timing.renew_deadline_seconds
        )

    # -- one round ------------------------------------------------------------------------
    def _request_timeout(self) -> float:
        return max(1.0, self.timing.renew_deadline_seconds / 2)

    def try_acquire_or_renew(self) -> bool:
        """One round against the API; True when this replica holds the Lease afterwards."""
        started = time.monotonic()
        now = _now()
        timeout = self._request_timeout()
        try:
            lease = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=timeout
            )
        except ApiException as err:
            if err.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=int(self.timing.lease_seconds),
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            try:
                self.coordination.create_namespaced_lease(
                    self.namespace, body, _request_timeout=timeout
                )
            except ApiException as create_err:
                if create_err.status == 409:
                    return False
                raise
            self._renewed_at = started
            return True
        spec = lease.spec
        record = (spec.holder_identity, str(spec.renew_time))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        held_by_other = bool(spec.holder_identity) and spec.holder_identity != self.identity
        duration = spec.lease_duration_seconds or self.timing.lease_seconds
        if held_by_other and time.monotonic() - self._observed_at < duration:
            return False
        if spec.holder_identity != self.identity:
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.acquire_time = now
        spec.holder_identity, spec.renew_time = self.identity, now
        spec.lease_duration_seconds = int(self.timing.lease_seconds)
        try:
            self.coordination.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=timeout
            )
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        self._renewed_at = started
        return True

    # -- the background loop --------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.try_acquire_or_renew()
            except ApiException as err:
                log.warning("lease %s/%s: API answered %s", self.namespace, self.name, err.status)
            except Exception as err:  # noqa: BLE001 - an unreachable API server is a failed try
                log.warning("lease %s/%s: %s", self.namespace, self.name, _short(err))
            self._announce()
            self._stop.wait(self.timing.retry_seconds)
        self._announce()

    def _announce(self) -> None:
        leading = self.leading()
        if leading != self._was_leading:
            self._was_leading = leading
            if leading:
                log.info("leading as %s", self.identity)
            else:
                log.warning("no longer leading as %s; writes stop", self.identity)
            if self.on_change is not None:
                self.on_change(leading)

    def stop(self, release: bool = True) -> None:
        """Stop renewing; with ``release``, hand the Lease back so that another replica
        takes over at once instead of waiting out the lease duration."""
        held = self._renewed_at is not None and self.leading()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._request_timeout() + 1)
        self._announce()
        if not (release and held):
            return
        try:
            lease = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._request_timeout()
            )
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = _now()
            self.coordination.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=self._request_timeout()
            )
            log.info("released lease %s/%s", self.namespace, self.name)
        except Exception as err:  # noqa: BLE001 - the lease then expires on its own
            log.warning("lease not released: %s", _short(err))


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]
