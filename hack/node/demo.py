"""The demo's steps on a node (``make demo``, and tests/node/test_demo_on_node.py): the
images into containerd, the CRDs, ``helm install`` of the chart, a TLS Secret as
cert-manager would write it, examples/, the receiver pods Running and Ready, and where the
example server mx01 answers (its load-balancer addresses, its spool on the node's volume)."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from hack.node import images
from hack.node.harness import Node
from hack.node.standins import StandIns
from hack.pki import Authority, ca_config_map, tls_secret

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMESPACE = "smtpgate-demo"
RELEASE = "smtpgate-demo"


@dataclass
class OnNode:
    internet: tuple[str, int]  # the Internet connector: 192.0.2.10:25 on its load balancer
    submission: tuple[str, int]  # the submission connector, 587 on the server's load balancer
    ca_file: pathlib.Path
    spool: pathlib.Path  # mx01's Maildir: its volume's folder on this host


def _say(text: str) -> None:
    print(text, flush=True)


class _Steps:
    def __init__(self, node: Node, standins: StandIns) -> None:
        self.node, self.standins = node, standins

    def kubectl(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run(
            [self.node.plane.kubectl, "--kubeconfig", str(self.node.plane.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)}: {done.stderr}")
        return done.stdout

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json")))

    def wait(self, what: str, check: Any, timeout: float = 240) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
            except (SystemExit, KeyError, IndexError, json.JSONDecodeError):
                pass
            time.sleep(1)
        raise SystemExit(
            f"timed out waiting for {what}\n{self.kubectl('get', 'all', '-n', NAMESPACE)}"
        )

    def ready(self, kind: str, name: str) -> bool:
        conditions = self.get(kind, name).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def load_balancer(self, service: str) -> str:
        return str(self.get("service", service)["status"]["loadBalancer"]["ingress"][0]["ip"])


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return False
    return True


def on_node(node: Node, standins: StandIns, work: pathlib.Path, say: Any = _say) -> OnNode:
    steps = _Steps(node, standins)
    say("== Building the images offline (cached after the first run) and loading them ==")
    names = {}
    for component in ("operator", "receiver"):
        names[component], archive = images.project_archive(component)
        node.import_image(archive)
        say(f"   {names[component]}  ({archive})")
    steps.kubectl(
        "apply",
        "--server-side",
        "-f",
        str(ROOT / "crds"),
        "-f",
        str(ROOT / "hack" / "cert-manager-stand-in.yaml"),
    )
    steps.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    say("== helm install of charts/smtpgate (CRDs applied above) ==")
    sets = {
        "crds.install": "false",
        "operator.watchNamespaces": f"{{{NAMESPACE}}}",
        "operator.image.repository": names["operator"].rsplit(":", 1)[0],
        "operator.image.tag": names["operator"].rsplit(":", 1)[1],
        "receiver.image.repository": names["receiver"].rsplit(":", 1)[0],
        "receiver.image.tag": names["receiver"].rsplit(":", 1)[1],
    }
    helm = [node.plane.helm, "--kubeconfig", str(node.plane.kubeconfig)]
    done = subprocess.run(
        [
            *helm,
            "upgrade",
            "--install",
            RELEASE,
            str(ROOT / "charts" / "smtpgate"),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
            "--wait",
            "--timeout",
            "180s",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"helm install: {done.stderr}")
    authority = Authority("Contoso Issuing CA", "Contoso")
    cert, key = authority.issue("mail.contoso.com", ["mail.contoso.com"], (-1, 90))
    ca_file = work / "contoso-ca.crt"
    ca_file.write_bytes(authority.pem())
    secret = tls_secret("mail-contoso-com", NAMESPACE, cert, key)
    steps.kubectl("apply", "-f", "-", input=json.dumps(secret))
    # examples/05's partner trust anchor, created as its comment says
    fabrikam = Authority("Fabrikam Issuing CA", "Fabrikam")
    anchors = ca_config_map("fabrikam-partner-ca", NAMESPACE, fabrikam)
    steps.kubectl("apply", "-f", "-", input=json.dumps(anchors))
    say("== Applying examples/ (the TLS Secret stands in for cert-manager's) ==")
    say(steps.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples")).rstrip())
    for server in ("ex01", "mx01"):
        steps.wait(f"TransportServer {server} Ready", lambda s=server: steps.ready("tsrv", s))
    say("== Ready means serving: the receiver pods run on the node ==")
    say(steps.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").rstrip())
    say(steps.kubectl("get", "services", "-n", NAMESPACE).rstrip())
    internet = steps.wait(
        "mx01's load balancer", lambda: steps.load_balancer("mx01-receiver-192-0-2-10")
    )
    submission = steps.wait("mx01's load balancer", lambda: steps.load_balancer("mx01-receiver"))
    for endpoint in ((internet, 25), (submission, 587)):  # kube-proxy's rules synced
        steps.wait(f"{endpoint[0]}:{endpoint[1]} accepting", lambda e=endpoint: _accepts(*e))
    spool = standins.claim_folder(NAMESPACE, "spool-mx01-receiver-0")
    return OnNode((internet, 25), (submission, 587), ca_file, spool)
