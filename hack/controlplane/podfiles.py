"""Lay out the files a receiver pod would mount, from the objects the operator wrote.

Reads the server's workload (StatefulSet or Deployment) and writes each volume's content
under a folder, at the pod's mount paths: the ConfigMap, the projected TLS Secrets, the
user database Secret. Used by the end-to-end test and the demo."""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess
from typing import Any


def _get(kubectl: list[str], kind: str, name: str, namespace: str) -> dict[str, Any]:
    out = subprocess.run(
        [*kubectl, "get", kind, name, "-n", namespace, "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def lay_out(kubectl: list[str], namespace: str, server: str, root: pathlib.Path) -> pathlib.Path:
    """Write the pod's files under ``root``; returns the config file's path."""
    workload = None
    for kind in ("statefulset", "deployment"):
        try:
            workload = _get(kubectl, kind, f"{server}-receiver", namespace)
            break
        except subprocess.CalledProcessError:
            continue
    if workload is None:
        raise LookupError(f"no workload for server {server} in {namespace}")
    pod = workload["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    for volume in pod["volumes"]:
        target = root / mounts[volume["name"]].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            data = _get(kubectl, "configmap", volume["configMap"]["name"], namespace)["data"]
            for key, value in data.items():
                (target / key).write_text(value)
        elif "secret" in volume:
            data = _get(kubectl, "secret", volume["secret"]["secretName"], namespace)["data"]
            for item in volume["secret"]["items"]:
                (target / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
        elif "projected" in volume:
            for source in volume["projected"]["sources"]:
                data = _get(kubectl, "secret", source["secret"]["name"], namespace)["data"]
                for item in source["secret"]["items"]:
                    path = target / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(base64.b64decode(data[item["key"]]))
    return root / mounts["config"].lstrip("/") / "config.json"
