"""The Kubernetes objects of one server, built as plain dicts. Pure: no API calls."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smtpgate.connectors.bindings import Binding
from smtpgate.connectors.config import ServerConfig
from smtpgate.connectors.specs import TransportServerSpec

from . import integrated

GROUP = "smtpgate.io"
API_VERSION = f"{GROUP}/v1alpha1"
CONFIG_DIR = "/etc/smtpgate/config"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
TLS_DIR = "/etc/smtpgate/tls"
USERS_DIR = "/etc/smtpgate/users"
HEALTH_PORT = 8080
FIRST_EXTRA_PORT = 10025
Body = dict[str, Any]


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _fit(name: str, key: str, limit: int = 63) -> str:
    """``name`` if it fits in ``limit``, else its start and a hash of ``key`` (what makes
    the name unique), so that names cut short stay distinct."""
    if len(name) <= limit:
        return name
    return f"{name[: limit - 11].rstrip('-')}-{_short_hash(key)}"


def slug(text: str) -> str:
    """A DNS-1123 name from free text: ``Default Frontend ex01`` → ``default-frontend-ex01``;
    a slug longer than 63 characters is cut and ends in a hash of the text."""
    return _fit(re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-"), text)


def receiver_name(server: str) -> str:
    return f"{server}-receiver"


def binding_service_name(server: str, address: str) -> str:
    """The Service of the bindings to one address: ``<server>-receiver-192-0-2-10``, or for
    IPv6 the address written out in full (``...-20010db8000000000000000000000001``), so that
    no two addresses share a name; cut and ended by a hash when longer than 63."""
    ip = ipaddress.ip_address(address)
    readable = ip.exploded.replace(":", "") if ip.version == 6 else str(ip).replace(".", "-")
    return _fit(f"{receiver_name(server)}-{readable}", f"{server}/{ip.exploded}")


def labels(server: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "smtpgate-receiver",
        "app.kubernetes.io/instance": server,
        "app.kubernetes.io/component": "receiver",
        "app.kubernetes.io/part-of": "smtpgate",
        "app.kubernetes.io/managed-by": "smtpgate-operator",
    }


def child_metadata(server: str, namespace: str, owner: Body, name: str = "") -> Body:
    """Name (``<server>-receiver`` unless given), labels and owner of a server's child."""
    return {
        "name": name or receiver_name(server),
        "namespace": namespace,
        "labels": labels(server),
        "ownerReferences": [owner],
    }


def owner_reference(body: Body) -> Body:
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def tls_paths(secret: str) -> tuple[str, str]:
    return f"{TLS_DIR}/{secret}/tls.crt", f"{TLS_DIR}/{secret}/tls.key"


def users_path(key: str) -> str:
    return f"{USERS_DIR}/{key}"


@dataclass(frozen=True)
class Port:
    """Where one binding is served: the container port, and the Service that carries it."""

    binding: Binding
    container_port: int

    @property
    def name(self) -> str:
        return f"smtp-{self.container_port}"


def port_plan(config: ServerConfig) -> list[Port]:
    """A container port per distinct (IP, port): all-address bindings keep their port, a
    binding to a specific IP gets a port of its own from 10025 up."""
    bindings = sorted({b for c in config.connectors for b in c.parsed_bindings})
    plan: list[Port] = []
    taken = {b.port for b in bindings if b.all_addresses}
    extra = FIRST_EXTRA_PORT
    for binding in bindings:
        if binding.all_addresses:
            plan.append(Port(binding, binding.port))
            continue
        while extra in taken:
            extra += 1
        taken.add(extra)
        plan.append(Port(binding, extra))
    return plan


def configmap(server: str, namespace: str, config: ServerConfig, owner: Body) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(server, namespace, owner),
        "data": {"config.json": config.to_json()},
    }


def config_hash(config: ServerConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:16]


def workload(
    server: str,
    namespace: str,
    spec: TransportServerSpec,
    config: ServerConfig,
    *,
    image: str,
    owner: Body,
    tls_secrets: Sequence[str],
) -> Body:
    """A Deployment, or a StatefulSet with a volume per replica for a spool (Maildir,
    StoreAndForward)."""
    plan = port_plan(config)
    host_network = spec.exposure.type == "HostNetwork"
    args = ["--config", CONFIG_FILE, "--health-port", str(HEALTH_PORT)]
    if not host_network:
        for port in plan:
            if not port.binding.all_addresses:
                args += ["--bind", f"{port.binding}=0.0.0.0:{port.container_port}"]
    inactivity = max(
        (c.limits.connection_inactivity_timeout_seconds for c in config.connectors), default=60
    )
    grace = inactivity + 30
    args += ["--grace-seconds", str(inactivity)]
    volumes: list[Body] = [
        {"name": "config", "configMap": {"name": receiver_name(server)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[Body] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if tls_secrets:
        volumes.append(
            {
                "name": "tls",
                "projected": {
                    "sources": [
                        {
                            "secret": {
                                "name": s,
                                "items": [
                                    {"key": "tls.crt", "path": f"{s}/tls.crt"},
                                    {"key": "tls.key", "path": f"{s}/tls.key"},
                                ],
                            }
                        }
                        for s in sorted(tls_secrets)
                    ]
                },
            }
        )
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if spec.user_database_secret_ref is not None:
        ref = spec.user_database_secret_ref
        volumes.append(
            {
                "name": "users",
                "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": ref.key}]},
            }
        )
        mounts.append({"name": "users", "mountPath": USERS_DIR, "readOnly": True})
    extra_volumes, extra_mounts, env = integrated.pod_parts(spec)
    volumes += extra_volumes
    mounts += extra_mounts
    spool = spec.next_hop.spooled  # Maildir, or StoreAndForward: a claim per replica
    if spool:
        mounts.append({"name": "spool", "mountPath": spec.next_hop.path})
    mounted = json.dumps({"volumes": volumes, "args": args}, sort_keys=True)
    container: Body = {
        "name": "receiver",
        "image": image,
        "args": args,
        "ports": [
            {"name": f"smtp-{port}", "containerPort": port, "protocol": "TCP"}
            for port in sorted({p.container_port for p in plan})
        ]
        + [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "volumeMounts": mounts,
        **({"env": env} if env else {}),
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "health"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": container_resources(spec, config),
        "securityContext": {
            # On the node's network no sysctl opens ports below 1024, and a capability
            # reaches only a root process (Kubernetes sets no ambient capabilities): uid 0
            # there, with NET_BIND_SERVICE as its one capability.
            "runAsNonRoot": not host_network,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {
                "drop": ["ALL"],
                **({"add": ["NET_BIND_SERVICE"]} if host_network else {}),
            },
        },
    }
    pod_security: Body = {
        "runAsNonRoot": not host_network,
        "runAsUser": 0 if host_network else 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if not host_network:
        pod_security["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    pod = spec.pod
    template: Body = {
        "metadata": {
            "labels": {**pod.labels, **labels(server)},
            "annotations": {
                **pod.annotations,
                **METRICS_ANNOTATIONS,
                f"{GROUP}/mounts-hash": hashlib.sha256(mounted.encode()).hexdigest()[:16],
            },
        },
        "spec": {
            **({"nodeSelector": pod.node_selector} if pod.node_selector else {}),
            **({"tolerations": pod.tolerations} if pod.tolerations else {}),
            **({"affinity": pod.affinity} if pod.affinity else {}),
            **(
                {"topologySpreadConstraints": pod.topology_spread_constraints}
                if pod.topology_spread_constraints
                else {}
            ),
            **({"priorityClassName": pod.priority_class_name} if pod.priority_class_name else {}),
            "containers": [container],
            "volumes": volumes,
            "securityContext": pod_security,
            "terminationGracePeriodSeconds": grace,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            **(
                {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}
                if host_network
                else {}
            ),
        },
    }
    body: Body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet" if spool else "Deployment",
        "metadata": child_metadata(server, namespace, owner),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(server)},
            "template": template,
        },
    }
    if spool:
        body["spec"]["serviceName"] = receiver_name(server)
        body["spec"]["podManagementPolicy"] = "Parallel"
        storage = spec.next_hop.storage
        body["spec"]["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": storage.when_deleted,
            "whenScaled": storage.when_scaled,
        }
        body["spec"]["volumeClaimTemplates"] = [
            {
                "metadata": {"name": "spool"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": str(storage.size)}},
                    **(
                        {"storageClassName": storage.storage_class_name}
                        if storage.storage_class_name
                        else {}
                    ),
                },
            }
        ]
    return body


# Each connection the connectors allow may hold this much at once: the header section (up
# to maxHeaderSize, 128Ki by default), the first 256Ki of a body (the rest goes to the spool
# file or the next hop as it arrives), and line buffers.
PER_CONNECTION_BYTES = 512 * 1024
BASE_MEMORY_BYTES = 256 * 1024 * 1024
METRICS_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(HEALTH_PORT),
    "prometheus.io/path": "/metrics",
}


def memory_limit(config: ServerConfig) -> str:
    """What the receiver may need when every connection its connectors allow is open."""
    connections = sum(c.limits.max_inbound_connection for c in config.connectors)
    total = BASE_MEMORY_BYTES + connections * PER_CONNECTION_BYTES
    return f"{-(-total // (1024 * 1024))}Mi"


def container_resources(spec: TransportServerSpec, config: ServerConfig) -> Body:
    """The server's own resources, else requests of 100m and 128Mi and a memory limit sized
    from the connectors' limits."""
    if spec.pod.resources is not None:
        own = spec.pod.resources
        return {
            **({"requests": dict(own.requests)} if own.requests else {}),
            **({"limits": dict(own.limits)} if own.limits else {}),
        }
    return {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": memory_limit(config)},
    }


def disruption_budget(server: str, namespace: str, spec: TransportServerSpec, owner: Body) -> Body:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(server, namespace, owner),
        "spec": {
            "maxUnavailable": spec.disruption_budget.max_unavailable,
            "selector": {"matchLabels": selector(server)},
        },
    }


def selector(server: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "smtpgate-receiver", "app.kubernetes.io/instance": server}


def selector_text(server: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(server).items())


def metrics_service(server: str, namespace: str, owner: Body) -> Body:
    """A ClusterIP Service for the receivers' /metrics, with the usual scrape annotations."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{receiver_name(server)}-metrics",
            "namespace": namespace,
            "labels": {**labels(server), "app.kubernetes.io/component": "receiver-metrics"},
            "annotations": dict(METRICS_ANNOTATIONS),
            "ownerReferences": [owner],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector(server),
            "ports": [
                {"name": "metrics", "port": HEALTH_PORT, "targetPort": "health", "protocol": "TCP"}
            ],
        },
    }


SERVICE_SUFFIX = {"LoadBalancer": "lb", "NodePort": "nodeport", "ClusterIP": "clusterip"}


def services(
    server: str, namespace: str, spec: TransportServerSpec, config: ServerConfig, owner: Body
) -> list[Body]:
    """The all-address bindings' Services (``<server>-receiver`` for the exposure's type, one
    more for each other type that ``exposure.ports`` chooses), and one Service per specific
    binding address."""
    exposure = spec.exposure
    if exposure.type == "HostNetwork":
        return []
    chosen = {p.port: p.type for p in exposure.ports}
    groups: dict[tuple[str, str], list[Port]] = {}
    for port in port_plan(config):
        if port.binding.all_addresses:
            key = ("", chosen.get(port.binding.port, exposure.type))
        else:
            key = (port.binding.address, exposure.type)
        groups.setdefault(key, []).append(port)
    out: list[Body] = []
    for (address, kind), ports in sorted(groups.items()):
        unique = {p.binding.port: p for p in ports}  # [::]:25 and 0.0.0.0:25 share a Service port
        if address:
            name = binding_service_name(server, address)
        elif kind == exposure.type:
            name = receiver_name(server)
        else:
            name = f"{receiver_name(server)}-{SERVICE_SUFFIX[kind]}"
        service_spec: Body = {
            "type": kind,
            "selector": selector(server),
            "ports": [
                {"name": p.name, "port": port, "targetPort": p.container_port, "protocol": "TCP"}
                for port, p in sorted(unique.items())
            ],
        }
        if kind in ("LoadBalancer", "NodePort"):
            service_spec["externalTrafficPolicy"] = exposure.external_traffic_policy
        if kind == "LoadBalancer":
            if exposure.load_balancer_class:
                service_spec["loadBalancerClass"] = exposure.load_balancer_class
            if address:
                service_spec["loadBalancerIP"] = address
        elif address and not ipaddress.ip_address(address).is_loopback:
            service_spec["externalIPs"] = [address]
        if exposure.ip_family_policy:
            service_spec["ipFamilyPolicy"] = exposure.ip_family_policy
        if exposure.ip_families:
            service_spec["ipFamilies"] = list(exposure.ip_families)
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    **child_metadata(server, namespace, owner, name),
                    "annotations": {
                        **exposure.annotations,
                        f"{GROUP}/binding-address": address or "all",
                    },
                },
                "spec": service_spec,
            }
        )
    return out
