"""An embedded Kubernetes control plane for the tests and the demo: etcd, kube-apiserver and
kube-controller-manager on free loopback ports in a temporary folder, built from the pins in
hack/controlplane (build.sh) and stopped by PID on exit.

    with ControlPlane.start() as cp:
        subprocess.run([cp.kubectl, "--kubeconfig", cp.kubeconfig, "get", "ns"])
"""

from __future__ import annotations

import atexit
import datetime as dt
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = pathlib.Path(__file__).resolve().parent


# Writes only, at Metadata level: enough to count who wrote what, small enough to keep.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    verbs: [get, list, watch]
  - level: Metadata
"""


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message carries the logs."""


def build() -> pathlib.Path:
    """Build (or find in the cache) the binaries; returns their folder."""
    done = subprocess.run(
        ["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise ControlPlaneError(f"hack/controlplane/build.sh failed with {done.returncode}")
    return pathlib.Path(done.stdout.strip().splitlines()[-1])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _name(common: str, org: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(parts)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server_ips: tuple[str, ...] = (),
    server_dns: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server_ips or server_dns:
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips]
        sans += [x509.DNSName(d) for d in server_dns]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(
    path: pathlib.Path, *, cert: x509.Certificate | None = None, key: object = None
) -> None:
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    path.write_bytes(data)
    path.chmod(0o600)


@dataclass
class ControlPlane:
    """A running control plane. Use ``ControlPlane.start()`` as a context manager."""

    bin_dir: pathlib.Path
    workdir: pathlib.Path
    host: str = "127.0.0.1"
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _args: dict[str, list[str]] = field(default_factory=dict)
    api_port: int = 0
    keep_workdir: bool = False
    # With a node (hack/node): Node authorization for the kubelet, and the workload and
    # volume controllers on, since a kubelet now runs what they make.
    node_mode: bool = False
    # Where the API server alone listens and what it advertises; the node's bridge address
    # in node mode, so that pods reach it through the `kubernetes` Service. etcd and the
    # controller-manager stay on ``host``.
    api_host: str = ""

    @property
    def kubeconfig(self) -> pathlib.Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def kubectl(self) -> str:
        return str(self.bin_dir / "kubectl")

    @property
    def helm(self) -> str:
        return str(self.bin_dir / "helm")

    @property
    def server(self) -> str:
        return f"https://{self.api_host or self.host}:{self.api_port}"

    @classmethod
    @contextmanager
    def start(
        cls,
        workdir: pathlib.Path | None = None,
        controller_manager: bool = True,
        node_mode: bool = False,
        api_host: str = "",
    ) -> Iterator[ControlPlane]:
        bin_dir = build()
        made = workdir is None
        folder = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-cp-")) if made else workdir
        assert folder is not None
        plane = cls(
            bin_dir=bin_dir,
            workdir=folder,
            keep_workdir=not made,
            node_mode=node_mode,
            api_host=api_host,
        )
        atexit.register(plane.stop)
        try:
            plane._launch(controller_manager)
            yield plane
        finally:
            plane.stop()

    def _pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("smtpgate-test-ca")
        ca = _issue(ca_name, ca_key, None, ca=True)
        _write_pem(pki / "ca.crt", cert=ca)
        _write_pem(pki / "ca.key", key=ca_key)
        serving_key = ec.generate_private_key(ec.SECP256R1())
        serving = _issue(
            _name("kube-apiserver"),
            serving_key,
            (ca_name, ca_key),
            server_ips=tuple(dict.fromkeys((self.host, self.api_host or self.host, "10.0.0.1"))),
            server_dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        )
        _write_pem(pki / "apiserver.crt", cert=serving)
        _write_pem(pki / "apiserver.key", key=serving_key)
        admin_key = ec.generate_private_key(ec.SECP256R1())
        admin = _issue(
            _name("smtpgate-admin", "system:masters"), admin_key, (ca_name, ca_key), client=True
        )
        _write_pem(pki / "admin.crt", cert=admin)
        _write_pem(pki / "admin.key", key=admin_key)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_pem(pki / "sa.key", key=sa_key)
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _write_kubeconfig(self) -> None:
        pki = self.workdir / "pki"
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: smtpgate
  cluster:
    server: {self.server}
    certificate-authority: {pki / "ca.crt"}
users:
- name: admin
  user:
    client-certificate: {pki / "admin.crt"}
    client-key: {pki / "admin.key"}
contexts:
- name: smtpgate
  context: {{cluster: smtpgate, user: admin, namespace: default}}
current-context: smtpgate
"""
        )

    def _spawn(self, name: str, args: list[str]) -> None:
        self._args[name] = args
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _launch(self, controller_manager: bool) -> None:
        self._pki()
        pki = self.workdir / "pki"
        etcd_port, peer_port = free_port(), free_port()
        self.api_port = free_port()
        self._write_kubeconfig()
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://{self.host}:{etcd_port}",
                f"--advertise-client-urls=http://{self.host}:{etcd_port}",
                f"--listen-peer-urls=http://{self.host}:{peer_port}",
                f"--initial-advertise-peer-urls=http://{self.host}:{peer_port}",
                f"--initial-cluster=default=http://{self.host}:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        audit_policy = self.workdir / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        self._spawn(
            "kube-apiserver",
            [
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                f"--etcd-servers=http://{self.host}:{etcd_port}",
                f"--bind-address={self.api_host or self.host}",
                f"--advertise-address={self.api_host or self.host}",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC" if self.node_mode else "--authorization-mode=RBAC",
                # as OpenShift has it: blockOwnerDeletion needs update on the owner's finalizers
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement"
                + (",NodeRestriction" if self.node_mode else ""),
                "--allow-privileged=true",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                # the node's InternalIP (its own bridge), never a DNS lookup of its name
                "--kubelet-preferred-address-types=InternalIP",
                "--v=1",
            ],
        )
        self._wait_ready(f"{self.server}/readyz", "kube-apiserver", timeout=90)
        if controller_manager:
            self._spawn(
                "kube-controller-manager",
                [
                    f"--kubeconfig={self.kubeconfig}",
                    f"--authentication-kubeconfig={self.kubeconfig}",
                    f"--authorization-kubeconfig={self.kubeconfig}",
                    f"--bind-address={self.host}",
                    f"--secure-port={free_port()}",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    f"--cert-dir={self.workdir / 'kcm-certs'}",
                    "--leader-elect=false",
                    self._controllers(),
                    "--concurrent-gc-syncs=5",
                    "--v=1",
                ],
            )

    def _controllers(self) -> str:
        if self.node_mode:
            return "--controllers=*,-nodeipam,-cloud-node-lifecycle,-bootstrapsigner,-tokencleaner"
        return (
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,"
            "-persistentvolume-binder,-attachdetach,-persistentvolume-expander,"
            "-ttl,-bootstrapsigner,-tokencleaner,"
            # No node runs pods here: the workload controllers would only make Pending
            # pods and report 0 ready; tests set workload status themselves.
            "-statefulset,-deployment,-replicaset,-daemonset,-job,-cronjob"
        )

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def _wait_ready(self, url: str, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        context = self._ssl_context()
        last = ""
        while time.monotonic() < deadline:
            for proc_name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        self._failure(f"{proc_name} exited with {proc.returncode}")
                    )
            try:
                with urllib.request.urlopen(url, context=context, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError as err:
                last = str(err)
            time.sleep(0.25)
        raise ControlPlaneError(self._failure(f"{name} not ready after {timeout}s ({last})"))

    def _failure(self, what: str) -> str:
        lines = [what]
        for name in self.processes:
            log = self.workdir / f"{name}.log"
            tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
            lines += [f"--- {name}.log (last {len(tail)} lines) ---", *tail]
        return "\n".join(lines)

    @property
    def audit_log(self) -> pathlib.Path:
        return self.workdir / "audit.log"

    def audit_events(self) -> list[dict[str, Any]]:
        """Every write the API server has answered so far (reads are not recorded)."""
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line being written
        return events

    def restart(self, name: str, down_seconds: float) -> None:
        """Kill one component (SIGKILL), keep it down for a while, start it again as it was
        started, and wait for the API server to be ready again."""
        proc = self.processes[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(down_seconds)
        self._spawn(name, self._args[name])
        self._wait_ready(f"{self.server}/readyz", name, timeout=90)

    def pause(self, name: str, seconds: float) -> None:
        """Freeze one component (SIGSTOP) for a while: an API server that is briefly away."""
        proc = self.processes[name]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop exactly the processes this control plane started, newest first."""
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()
        if not self.keep_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
