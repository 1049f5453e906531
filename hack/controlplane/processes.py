"""The operator as its own process, the audit-log reading that counts its writes, and the
stand-in for workload status that this control plane's missing node would report. Shared by
the tests and the operator benchmark."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import threading
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    """``python -m smtpgate.operator`` running against the embedded control plane. The tests
    look at every server again every 5 s (``resync``), so that a write a resync would make
    shows within their patience."""

    def __init__(
        self,
        kubeconfig: str,
        log: pathlib.Path,
        lease_namespace: str = "default",
        namespaces: list[str] | None = None,
        extra: list[str] | None = None,
        resync: str = "5",
    ) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.lease_namespace, self.namespaces = lease_namespace, namespaces or []
        self.extra, self.resync = extra or [], resync
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = 0

    def start(self) -> None:
        self.health_port = _free_port()
        env = dict(
            os.environ,
            KUBECONFIG=self.kubeconfig,
            SMTPGATE_RESYNC_SECONDS=self.resync,
            SMTPGATE_RECEIVER_IMAGE="smtpgate/receiver:test",
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "smtpgate.operator",
                    "--liveness",
                    f"http://127.0.0.1:{self.health_port}/healthz",
                    "--lease-namespace",
                    self.lease_namespace,
                    "--log-level",
                    "INFO",
                    *(f"--namespace={n}" for n in self.namespaces),
                    *self.extra,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def http(self, path: str) -> tuple[int, str]:
        """GET one of the operator's own endpoints (/healthz, /readyz, /metrics)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}{path}", timeout=5
            ) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError as err:  # not listening (yet, or any more)
            return 0, str(err)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def user_agent(self) -> str:
        """What this process sends as User-Agent (and the audit log records)."""
        assert self.proc is not None
        return f"smtpgate-operator/{socket.gethostname()}-{self.proc.pid}"


def writes_by(events: list[dict[str, Any]], agent: str, since: str = "") -> list[dict[str, Any]]:
    """Audit events of writes made with User-Agent ``agent`` at or after ``since`` (an
    RFC 3339 timestamp as the audit log writes them)."""
    return [
        e
        for e in events
        if e.get("userAgent") == agent
        and e.get("verb") in ("create", "update", "patch", "delete", "deletecollection")
        and e.get("stage") == "ResponseComplete"
        and e.get("requestReceivedTimestamp", "") >= since
    ]


NO_STANDIN_PREFIX = "nokubelet-"


class WorkloadStatusStandIn:
    """Stands in for the kubelet and the workload controllers, which this control plane does
    not run: marks every receiver StatefulSet and Deployment as having all its replicas
    ready for its current generation, as they report once pods serve. Namespaces named
    ``nokubelet-...`` are left alone, for tests of what status says while pods do not serve.
    The real node replaces this."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="standin")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        from kubernetes import client, config

        api = client.ApiClient(config.load_kube_config(config_file=self.kubeconfig) or None)
        api.user_agent = "smtpgate-test/workload-status-standin"
        apps = client.AppsV1Api(api)
        while not self.stop_flag.wait(0.3):
            try:
                for lister, patcher in (
                    (
                        apps.list_stateful_set_for_all_namespaces,
                        apps.patch_namespaced_stateful_set_status,
                    ),
                    (
                        apps.list_deployment_for_all_namespaces,
                        apps.patch_namespaced_deployment_status,
                    ),
                ):
                    items = lister(
                        label_selector="app.kubernetes.io/managed-by=smtpgate-operator",
                        _request_timeout=10,
                    ).items
                    for item in items:
                        meta, want = item.metadata, item.spec.replicas or 0
                        if meta.namespace.startswith(NO_STANDIN_PREFIX):
                            continue
                        status = item.status
                        if (
                            status is not None
                            and status.observed_generation == meta.generation
                            and status.ready_replicas == want
                            and status.updated_replicas == want
                        ):
                            continue
                        patcher(
                            meta.name,
                            meta.namespace,
                            {
                                "status": {
                                    "observedGeneration": meta.generation,
                                    "replicas": want,
                                    "readyReplicas": want,
                                    "updatedReplicas": want,
                                    "availableReplicas": want,
                                    "currentReplicas": want,
                                }
                            },
                            _request_timeout=10,
                        )
            except Exception:  # noqa: BLE001 - the API server may be paused by a test
                continue
