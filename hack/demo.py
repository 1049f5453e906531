"""``make demo``: smtpgate end to end on an embedded control plane.

On the node (hack/node: root and its Debian packages): starts the control plane and one
node, builds the images offline, ``helm install``s the chart, applies examples/, shows the
receiver pods running and holds a short SMTP conversation with a pod through its
connector's load-balancer address.

Without a node (``--loopback``, or when this machine cannot run one, said why): starts
etcd, kube-apiserver and kube-controller-manager, runs the operator as a process, applies
examples/, starts the receiver for the example server mx01 on loopback from the ConfigMap
the operator wrote, and holds the same conversation.

Then it leaves everything running until Ctrl-C (or exits, with --exit-after-script)."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hack.controlplane import podfiles  # noqa: E402
from hack.controlplane.harness import ControlPlane  # noqa: E402
from hack.pki import Authority, ca_config_map, tls_secret  # noqa: E402

NAMESPACE = "smtpgate-demo"


def say(text: str = "") -> None:
    print(text, flush=True)


def outcome(label: str, ok: bool, detail: str) -> None:
    say(f"  [{'ok' if ok else 'UNEXPECTED'}] {label}: {detail}")
    if not ok:
        raise SystemExit(f"demo step failed: {label}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def issue_certificate(folder: pathlib.Path) -> tuple[bytes, bytes, pathlib.Path]:
    """What cert-manager would put in the Secret: a certificate for mail.contoso.com from
    a CA 'Contoso Issuing CA'."""
    authority = Authority("Contoso Issuing CA", "Contoso")
    cert, key = authority.issue("mail.contoso.com", ["mail.contoso.com"], (-1, 90))
    ca_file = folder / "contoso-ca.crt"
    ca_file.write_bytes(authority.pem())
    return cert, key, ca_file


class Demo:
    def __init__(self, plane: ControlPlane, work: pathlib.Path) -> None:
        self.plane, self.work = plane, work
        self.kubectl_args = [plane.kubectl, "--kubeconfig", str(plane.kubeconfig)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def kubectl(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run(
            [*self.kubectl_args, *args], input=input, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)}: {done.stderr}")
        return done.stdout

    def wait_for(self, what: str, check: Any, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
            except (SystemExit, KeyError, IndexError, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"timed out waiting for {what}")

    def start_operator(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.plane.kubeconfig), SMTPGATE_RESYNC_SECONDS="10")
        with open(self.work / "operator.log", "wb") as log:
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "smtpgate.operator",
                        "--liveness",
                        f"http://127.0.0.1:{free_port()}/healthz",
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def condition(self, kind: str, name: str, kind_of_condition: str) -> dict[str, Any]:
        body = json.loads(self.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json"))
        for cond in (body.get("status") or {}).get("conditions") or []:
            if cond["type"] == kind_of_condition:
                return dict(cond)
        return {}

    def accepted(self, kind: str, name: str) -> bool:
        return self.condition(kind, name, "Accepted").get("status") == "True"

    def start_receiver(self, config_file: pathlib.Path) -> dict[str, int]:
        ports = {"internet": free_port(), "submission": free_port()}
        args = [
            sys.executable,
            "-m",
            "smtpgate.receiver",
            "--config",
            str(config_file),
            "--files-root",
            str(self.work / "pod"),
            "--spool",
            str(self.work / "spool"),
            "--bind",
            f"192.0.2.10:25=127.0.0.1:{ports['internet']}",
            "--listen-v4",
            "127.0.0.1",
            "--listen-v6",
            "::1",
            "--port-map",
            f"587={ports['submission']}",
            "--protocol-log",
            str(self.work / "protocol.log"),
        ]
        with open(self.work / "receiver.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
        self.processes.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise SystemExit((self.work / "receiver.log").read_text())
        return ports

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()


Endpoint = tuple[str, int]


def conversation(
    internet: Endpoint,
    submission: Endpoint,
    ca_file: pathlib.Path,
    spool: pathlib.Path,
    loopback: bool = True,
) -> None:
    """Clients from 127.0.0.2-4 on loopback; on the node, from this host."""

    def source(last: int) -> tuple[str, int] | None:
        return (f"127.0.0.{last}", 0) if loopback else None

    say("\n== An SMTP conversation with the receiver of server mx01 ==")
    say(f"   Internet connector 192.0.2.10:25  -> {internet[0]}:{internet[1]}")
    say(f"   Submission connector 0.0.0.0:587 -> {submission[0]}:{submission[1]}\n")
    with smtplib.SMTP(source_address=source(2), timeout=15) as smtp:
        code, banner = smtp.connect(*internet)
        say(f"  anonymous client connects: {code} {banner.decode()}")
        smtp.ehlo("outside.example")
        smtp.mail("someone@example.org")
        code, text = smtp.rcpt("friend@foreign.example")
        outcome(
            "relay for an anonymous client",
            code == 550,
            f"RCPT friend@foreign.example -> {code} {text.decode()}",
        )
        code, text = smtp.rcpt("user@contoso.com")
        outcome(
            "mail for an accepted domain",
            code == 250,
            f"RCPT user@contoso.com -> {code} {text.decode()}",
        )
        code, text = smtp.data(b"Subject: hello from the demo\r\n\r\nHello, Contoso.\r\n")
        outcome("message accepted", code == 250, f"DATA -> {code} {text.decode()}")
    messages = list((spool / "new").iterdir())
    say(f"  spooled (fsynced before the 250): {messages[0]}")

    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False  # we dial an address; the name is checked below
    with smtplib.SMTP(*internet, source_address=source(3), timeout=15) as smtp:
        smtp.ehlo("outside.example")
        smtp.starttls(context=context)
        cert = smtp.sock.getpeercert()
        subject = dict(x[0] for x in cert["subject"])["commonName"]
        issuer = ", ".join(f"{k}={v}" for rdn in cert["issuer"] for k, v in rdn)
        outcome(
            "STARTTLS with the selected certificate",
            subject == "mail.contoso.com",
            f"subject CN={subject}; issuer {issuer}",
        )

    with smtplib.SMTP(*submission, source_address=source(4), timeout=15) as smtp:
        smtp.ehlo("laptop.example")
        outcome(
            "no AUTH before TLS on submission", not smtp.has_extn("auth"), "EHLO offers no AUTH"
        )
        code, text = smtp.mail("alice@contoso.com")
        outcome(
            "mail before STARTTLS refused (requireTLS)",
            code == 530,
            f"MAIL -> {code} {text.decode()}",
        )
        smtp.rset()
        smtp.starttls(context=context)
        smtp.ehlo("laptop.example")
        smtp.login("alice", "demo-password")
        refused = smtp.sendmail(
            "alice@contoso.com",
            ["partner@foreign.example"],
            b"Subject: authenticated submission\r\n\r\nSent after AUTH.\r\n",
        )
        outcome(
            "authenticated submission relays",
            refused == {},
            "alice after STARTTLS + AUTH PLAIN -> 250",
        )


def hold(exit_after_script: bool) -> int:
    if exit_after_script:
        say("demo finished")
        return 0
    say("  Ctrl-C stops everything the demo started.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("\nstopping")
    return 0


def node_missing() -> str | None:
    """Why the demo cannot use a node here, or None."""
    from hack.node.harness import missing_packages, unavailable_reason

    reason = unavailable_reason()
    if reason is None and missing_packages():
        reason = f"missing Debian packages {' '.join(missing_packages())} (make node-deps)"
    return reason


def run_on_node(args: argparse.Namespace, work: pathlib.Path) -> int:
    from hack.node.demo import NAMESPACE as NODE_NAMESPACE
    from hack.node.demo import on_node
    from hack.node.harness import Node
    from hack.node.standins import StandIns

    say("== Starting the control plane and one node (the first run builds them) ==")
    with Node.start() as node, StandIns(node) as standins:
        say(f"   kube-apiserver {node.plane.server}, node {node.name} on {node.node_ip}")
        found = on_node(node, standins, work, say)
        conversation(found.internet, found.submission, found.ca_file, found.spool, False)
        say("\n== Everything is running ==")
        say(f"  export KUBECONFIG={node.plane.kubeconfig}")
        say(f"  {node.plane.kubectl} get smtpgate,pods -n {NODE_NAMESPACE}")
        say(f"  swaks --server {found.internet[0]}:25 --to user@contoso.com")
        say(f"  spool: {found.spool}")
        return hold(args.exit_after_script)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--exit-after-script", action="store_true", help="stop after the conversation"
    )
    parser.add_argument(
        "--loopback", action="store_true", help="no node: the receiver as a process on loopback"
    )
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-demo-"))
    if not args.loopback:
        reason = node_missing()
        if reason is None:
            return run_on_node(args, work)
        say(f"== No node on this machine ({reason}): the receiver runs on loopback ==")
    return run_on_loopback(args, work)


def run_on_loopback(args: argparse.Namespace, work: pathlib.Path) -> int:
    say("== Starting the embedded control plane (the first run builds it; progress below) ==")
    with ControlPlane.start() as plane:
        demo = Demo(plane, work)
        try:
            say(f"   kube-apiserver {plane.server}, kubeconfig {plane.kubeconfig}")
            demo.kubectl(
                "apply",
                "--server-side",
                "-f",
                str(ROOT / "crds"),
                "-f",
                str(ROOT / "hack" / "cert-manager-stand-in.yaml"),
            )
            demo.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
            say("== CRDs installed; starting the operator ==")
            demo.start_operator()
            demo.kubectl("create", "namespace", NAMESPACE)
            cert, key, ca_file = issue_certificate(work)
            secret = tls_secret("mail-contoso-com", NAMESPACE, cert, key)
            demo.kubectl("apply", "-f", "-", input=json.dumps(secret))
            # examples/05's partner trust anchor, created as its comment says
            fabrikam = Authority("Fabrikam Issuing CA", "Fabrikam")
            anchors = ca_config_map("fabrikam-partner-ca", NAMESPACE, fabrikam)
            demo.kubectl("apply", "-f", "-", input=json.dumps(anchors))
            say("== Applying examples/ (the TLS Secret stands in for cert-manager's) ==")
            say(demo.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples")).rstrip())
            for name in ("internet-mx01", "partner-fabrikam", "submission-mx01"):
                demo.wait_for(
                    f"{name} Accepted", lambda n=name: demo.accepted("receiveconnector", n)
                )
            demo.wait_for(
                "the default connectors of ex01",
                lambda: demo.accepted("receiveconnector", "default-frontend-ex01"),
            )
            say(demo.kubectl("get", "receiveconnectors", "-n", NAMESPACE).rstrip())
            ready = demo.condition("transportserver", "mx01", "Ready")
            say(
                "== Ready means serving: this control plane runs no node, so no receiver pod "
                f"starts and Ready stays False ({ready.get('reason')}: {ready.get('message')}) =="
            )
            config_file = podfiles.lay_out(demo.kubectl_args, NAMESPACE, "mx01", work / "pod")
            say(
                "== The operator wrote ConfigMap mx01-receiver; "
                f"the pod's files are under {work / 'pod'} =="
            )
            ports = demo.start_receiver(config_file)
            local = "127.0.0.1"
            conversation(
                (local, ports["internet"]), (local, ports["submission"]), ca_file, work / "spool"
            )
            say("\n== Everything is running ==")
            say(f"  export KUBECONFIG={plane.kubeconfig}")
            say(f"  {plane.kubectl} get smtpgate -n {NAMESPACE}")
            say(f"  swaks --server 127.0.0.1:{ports['internet']} --to user@contoso.com")
            say(f"  protocol log: {work / 'protocol.log'}   spool: {work / 'spool'}")
            return hold(args.exit_after_script)
        finally:
            demo.stop()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
