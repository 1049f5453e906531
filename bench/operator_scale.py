"""The operator at scale, on the embedded control plane: servers × connectors created in one
burst, then left alone.

Reports: how long the burst took to create, when every server's ConfigMap held all its
connectors and every connector was Ready (convergence); the operator's writes during the
burst by kind and per ConfigMap, counted in the API server's audit log by the operator's
User-Agent; how soon a server created in another namespace during the burst got its
ConfigMap; the writes during the idle period after convergence (the target is zero); and
the operator's RSS and CPU seconds, sampled through the idle period (``--soak-minutes`` for a
longer watch of RSS).

Configuration disclosed with the results: one operator process (4 workers), the tests'
workload-status stand-in marking receiver workloads ready (no node runs pods here), default
connectors off so that every server has exactly ``--connectors``, the operator's default
resync (600 s).

    .venv/bin/python bench/operator_scale.py [--servers 100 --connectors 10 --idle-seconds 180]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hack.controlplane.harness import ControlPlane  # noqa: E402
from hack.controlplane.processes import Operator, WorkloadStatusStandIn, writes_by  # noqa: E402

GROUP, VERSION = "smtpgate.io", "v1alpha1"


def stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def server(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TransportServer",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"fqdn": f"{name}.contoso.com", "createDefaultConnectors": False},
    }


def connector(ns: str, server_name: str, index: int, j: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ReceiveConnector",
        "metadata": {"name": f"{server_name}-c{j}", "namespace": ns},
        "spec": {
            "server": server_name,
            "usage": "Partner",
            "bindings": [f"0.0.0.0:{2600 + j}"],
            "remoteIPRanges": [f"198.18.{index % 256}.{j * 16}/28"],
        },
    }


def process(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    rss = 0.0
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--connectors", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=180)
    parser.add_argument("--soak-minutes", type=float, default=0)
    parser.add_argument("--threads", type=int, default=8, help="clients creating the burst")
    args = parser.parse_args()

    from kubernetes import client, config

    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-opbench-"))
    with ControlPlane.start() as plane:
        kubeconfig = str(plane.kubeconfig)

        def kubectl(*a: str, input: str | None = None) -> str:
            import subprocess

            return subprocess.run(
                [plane.kubectl, "--kubeconfig", kubeconfig, *a],
                input=input,
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        kubectl("create", "namespace", "bench")
        kubectl("create", "namespace", "bench-other")
        standin = WorkloadStatusStandIn(kubeconfig)
        standin.start()
        operator = Operator(kubeconfig, work / "operator.log", resync="600")
        operator.start()
        assert operator.proc is not None
        while "leading as" not in operator.output():
            time.sleep(0.2)
        api = client.ApiClient(config.load_kube_config(config_file=kubeconfig) or None)
        custom = client.CustomObjectsApi(api)
        core = client.CoreV1Api(api)
        rss0, cpu0 = process(operator.proc.pid)

        def create(body: dict[str, Any]) -> None:
            plural = (
                "transportservers" if body["kind"] == "TransportServer" else "receiveconnectors"
            )
            custom.create_namespaced_custom_object(
                GROUP, VERSION, body["metadata"]["namespace"], plural, body
            )

        def one_server(i: int) -> None:
            name = f"ts{i:03d}"
            create(server("bench", name))
            for j in range(args.connectors):
                create(connector("bench", name, i, j))

        other: dict[str, float] = {}

        def other_namespace() -> None:
            time.sleep(2)
            started = time.monotonic()
            create(server("bench-other", "lonely"))
            while True:
                try:
                    core.read_namespaced_config_map("lonely-receiver", "bench-other")
                    other["seconds"] = time.monotonic() - started
                    return
                except client.ApiException:
                    time.sleep(0.1)

        burst_since = stamp()
        started = time.monotonic()
        watcher = threading.Thread(target=other_namespace)
        watcher.start()
        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(one_server, range(args.servers)))
        created = time.monotonic() - started
        total = args.servers * args.connectors

        def converged() -> bool:
            maps = core.list_namespaced_config_map(
                "bench", label_selector="app.kubernetes.io/managed-by=smtpgate-operator"
            ).items
            full = 0
            for cm in maps:
                names = {c["name"] for c in json.loads(cm.data["config.json"])["connectors"]}
                full += sum(1 for n in names if re.search(r"^ts\d+-c\d+$", n)) == args.connectors
            if full < args.servers:
                return False
            items = custom.list_namespaced_custom_object(
                GROUP, VERSION, "bench", "receiveconnectors"
            )["items"]
            ready = 0
            for item in items:
                status = item.get("status") or {}
                if status.get("observedGeneration") != item["metadata"]["generation"]:
                    continue
                ready += any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in status.get("conditions") or []
                )
            return ready == total

        while not converged():
            time.sleep(0.5)
        convergence = time.monotonic() - started
        watcher.join()
        rss1, cpu1 = process(operator.proc.pid)
        time.sleep(5)
        events = plane.audit_events()
        burst = writes_by(events, operator.user_agent, burst_since)
        by_kind: dict[str, int] = {}
        per_cm: dict[str, int] = {}
        for e in burst:
            ref = e.get("objectRef") or {}
            sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
            key = f"{e['verb']} {ref.get('resource')}{sub}"
            by_kind[key] = by_kind.get(key, 0) + 1
            if ref.get("resource") == "configmaps" and ref.get("namespace") == "bench":
                per_cm[ref["name"]] = per_cm.get(ref["name"], 0) + 1

        idle_since = stamp()
        samples = [(0.0, *process(operator.proc.pid))]
        idle_total = max(args.idle_seconds, args.soak_minutes * 60)
        idle_started = time.monotonic()
        while (elapsed := time.monotonic() - idle_started) < idle_total:
            time.sleep(min(30, idle_total - elapsed))
            samples.append((time.monotonic() - idle_started, *process(operator.proc.pid)))
        idle_writes = writes_by(plane.audit_events(), operator.user_agent, idle_since)

        operator.stop()
        standin.stop()

    rss = [s[1] for s in samples]
    other_seconds = other.get("seconds", float("nan"))
    rows = [
        (
            f"objects created ({args.threads} client threads)",
            f"{args.servers + total} in {created:.1f} s",
        ),
        ("converged: every ConfigMap full, every connector Ready", f"{convergence:.1f} s"),
        ("another namespace during the burst: create -> ConfigMap", f"{other_seconds:.2f} s"),
        ("operator writes during burst and convergence", str(len(burst))),
        *((f"- {key}", str(count)) for key, count in sorted(by_kind.items())),
    ]
    if per_cm:
        mean = statistics.mean(per_cm.values())
        rows.append(("ConfigMap writes per server", f"max {max(per_cm.values())}, mean {mean:.2f}"))
    rows += [
        (f"writes while idle for {idle_total:.0f} s", str(len(idle_writes))),
        (
            "operator RSS: before, converged, idle min..max",
            f"{rss0:.0f}, {rss1:.0f}, {min(rss):.0f}..{max(rss):.0f} MiB",
        ),
        (
            "operator CPU: burst and convergence; idle",
            f"{cpu1 - cpu0:.1f} s; {samples[-1][2] - samples[0][2]:.1f} s",
        ),
    ]
    print(f"\n## Operator: {args.servers} servers x {args.connectors} connectors in one burst\n")
    print("| measure | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    print(f"\nOperator log: {work / 'operator.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
