"""What a cloud or an add-on gives a real cluster, done for the node in one small thread:

- **Load balancers** (as MetalLB's layer-2 mode would): a ``LoadBalancer`` Service gets its
  ``spec.loadBalancerIP`` (else the next free address of ``192.0.2.200/29``) written into
  ``status.loadBalancer.ingress``; kube-proxy then forwards that address, and the host routes
  it to the node's bridge.
- **Volumes** (a tiny hostPath provisioner): a Pending claim with no storage class gets a
  ``hostPath`` PersistentVolume of its size under the node's folder, bound to it by
  ``claimRef`` (the folder is 0777: Maildir files are written by the pod's user).

    with StandIns(node):
        ...
"""

from __future__ import annotations

import ipaddress
import logging
import pathlib
import subprocess
import threading
from types import TracebackType
from typing import Any

from hack.node.harness import Node

log = logging.getLogger(__name__)
POOL = ipaddress.ip_network("192.0.2.200/29")


class StandIns:
    def __init__(self, node: Node, interval: float = 0.5) -> None:
        from kubernetes import client, config

        self.node = node
        self.interval = interval
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(node.plane.kubeconfig), client_configuration=configuration
        )
        self.core = client.CoreV1Api(client.ApiClient(configuration))
        self.volumes = node.workdir / "volumes"
        self.routed: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-standins", daemon=True)

    def __enter__(self) -> StandIns:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.load_balancers()
                self.provision()
            except Exception as err:  # the API server may be stopping; try again
                log.debug("stand-ins: %s", err)

    # -- load balancers ----------------------------------------------------------------

    def load_balancers(self) -> None:
        services = self.core.list_service_for_all_namespaces().items
        taken = {
            i.ip
            for s in services
            for i in ((s.status.load_balancer and s.status.load_balancer.ingress) or [])
        }
        free = (str(a) for a in POOL.hosts() if str(a) not in taken)
        for svc in services:
            if svc.spec.type != "LoadBalancer" or (
                svc.status.load_balancer and svc.status.load_balancer.ingress
            ):
                continue
            address = svc.spec.load_balancer_ip or next(free, None)
            if address is None:
                continue
            self.core.patch_namespaced_service_status(
                svc.metadata.name,
                svc.metadata.namespace,
                {"status": {"loadBalancer": {"ingress": [{"ip": address, "ipMode": "VIP"}]}}},
            )
            self._route(address)

    def _route(self, address: str) -> None:
        """From this host, the address leads to the node (kube-proxy translates it there)."""
        if address in self.routed:
            return
        subprocess.run(
            ["ip", "route", "replace", f"{address}/32", "dev", self.node.bridge],
            capture_output=True,
            check=False,
        )
        self.routed.add(address)

    # -- volumes -----------------------------------------------------------------------

    def provision(self) -> None:
        for claim in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if claim.status.phase != "Pending" or claim.spec.storage_class_name:
                continue
            if claim.spec.volume_name:
                continue
            self._volume_for(claim)

    def _volume_for(self, claim: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        name = f"pv-{claim.metadata.uid}"
        folder: pathlib.Path = self.volumes / name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"smtpgate.io/provisioned-by": "node"}},
            "spec": {
                "capacity": {"storage": claim.spec.resources.requests["storage"]},
                "accessModes": claim.spec.access_modes,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(folder), "type": "Directory"},
                "claimRef": {
                    "namespace": claim.metadata.namespace,
                    "name": claim.metadata.name,
                    "uid": claim.metadata.uid,
                },
            },
        }
        try:
            self.core.create_persistent_volume(body)
        except ApiException as err:
            if err.status != 409:
                raise

    def claim_folder(self, namespace: str, claim: str) -> pathlib.Path:
        """Where a claim's volume lives on this host."""
        body = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
        return self.volumes / f"pv-{body.metadata.uid}"
