"""A single Kubernetes node beside the embedded control plane: containerd (Debian's, with its
own config, state, root and socket in the node's folder), runc, the CNI plugins (a bridge of
our own with a host-local pod range), kube-scheduler, a kubelet registered as
``system:node:<name>`` and kube-proxy. Images come from ``ctr images import`` of OCI archives
(hack/node/images.py), never from a registry.

    with Node.start() as node:
        node.import_image(images.busybox_archive(folder))

Only one node runs per host at a time (kube-proxy's chains are host-wide): a second waits for
the first. ``stop()`` removes every sandbox through CRI (so CNI tears its network down), stops
what it started by PID, unmounts what is left under its folder, and deletes its bridge, its
cgroups and kube-proxy's rules.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import json
import os
import pathlib
import random
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from hack.controlplane.harness import ControlPlane, _issue, _name, _write_pem, free_port
from hack.node import images

HERE = pathlib.Path(__file__).resolve().parent
LOCK = pathlib.Path("/run/smtpgate-node.lock")
CNI_BIN = pathlib.Path("/usr/lib/cni")
SERVICE_RANGE = "10.0.0.0/24"  # the API server's --service-cluster-ip-range
# Documentation ranges (RFC 5737) that stand for clients beyond a load balancer: pods route
# them to this host, where hack/node/outside.py puts them in a network namespace.
OUTSIDE_RANGES = ("198.51.100.0/24", "203.0.113.0/24")
# program -> Debian package; `make node-deps` installs them all
NEEDS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "ip": "iproute2",
    "buildah": "buildah",  # the project's images
    "debootstrap": "debootstrap",  # their base
    "busybox": "busybox-static",  # the test image
}


class NodeUnavailable(RuntimeError):
    """This machine cannot run a node at all (not root, no cgroups, a package missing)."""


class NodeError(RuntimeError):
    """The node could be started here but failed; the message carries the logs."""


def build() -> pathlib.Path:
    done = subprocess.run(
        ["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise NodeError(f"hack/node/build.sh failed with {done.returncode}")
    return pathlib.Path(done.stdout.strip().splitlines()[-1])


def missing_packages() -> list[str]:
    """Debian packages the node needs and this machine lacks (installable: not a reason to
    skip, the node fixture fails and names them)."""
    missing = {package for tool, package in NEEDS.items() if shutil.which(tool) is None}
    if not all((CNI_BIN / p).exists() for p in ("bridge", "host-local", "loopback", "portmap")):
        missing.add("containernetworking-plugins")
    return sorted(missing)


def unavailable_reason() -> str | None:
    """Why no node can run on this machine at all, or None: only what installing packages
    cannot change (not root, no cgroups, no overlay filesystem)."""
    if os.geteuid() != 0:
        return "a node needs root (mounts, network namespaces, cgroups)"
    if "overlay" not in pathlib.Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (containerd's snapshotter)"
    for controller in ("cpu", "memory", "pids", "devices"):
        if (
            not pathlib.Path(f"/sys/fs/cgroup/{controller}").is_dir()
            and not pathlib.Path("/sys/fs/cgroup/cgroup.controllers").exists()
        ):
            return f"cgroup controller {controller} is not mounted under /sys/fs/cgroup"
    return None


def _pod_network() -> ipaddress.IPv4Network:
    """A /24 under 10.244.0.0/16 that no route on this host covers yet."""
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    taken = []
    for line in used.splitlines():
        word = line.split()[0] if line.split() else ""
        try:
            taken.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    choices = list(range(1, 255))
    random.shuffle(choices)
    if any(t.overlaps(ipaddress.ip_network(SERVICE_RANGE)) for t in taken):
        raise NodeError(f"a route for the service range {SERVICE_RANGE} exists on this host")
    for third in choices:
        net = ipaddress.ip_network(f"10.244.{third}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise NodeError("no free /24 in 10.244.0.0/16 for pods")


def _stop_on_sigterm():  # type: ignore[no-untyped-def]
    """A SIGTERM (CI cancelling, ``timeout``) unwinds like Ctrl-C, so that ``stop()`` runs:
    a node's leftovers (mounts, a bridge, shims) outlive the process, unlike the control
    plane's."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, handler)
        return previous
    return None


def _kube_chains() -> set[tuple[str, str, str]]:
    """(command, table, chain) of every KUBE-* chain the kubelet or kube-proxy may make."""
    found = set()
    for command in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            done = subprocess.run(
                [command, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False
            )
            for line in done.stdout.splitlines():
                if line.startswith("-N KUBE-"):
                    found.add((command, table, line.split()[1]))
    return found


def _remove_kube_chains(chains: set[tuple[str, str, str]]) -> None:
    """Delete the chains this node made (and the rules that jump to them); kube-proxy
    --cleanup leaves the kubelet's and a few of its own."""
    for command, table in {(c, t) for c, t, _ in chains}:
        mine = {chain for c, t, chain in chains if (c, t) == (command, table)}
        rules = subprocess.run(
            [command, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        for rule in rules:
            words = shlex.split(rule)
            if words[:1] == ["-A"] and words[1] not in mine and any(w in mine for w in words):
                subprocess.run([command, "-w", "-t", table, "-D", *words[1:]], check=False)
        for chain in mine:
            subprocess.run([command, "-w", "-t", table, "-F", chain], check=False)
        for chain in mine:
            subprocess.run([command, "-w", "-t", table, "-X", chain], check=False)


@dataclass
class Node:
    bin_dir: pathlib.Path
    workdir: pathlib.Path
    plane: ControlPlane = field(init=False)
    name: str = "smtpgate-node"
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    bridge: str = ""
    pod_network: ipaddress.IPv4Network = ipaddress.ip_network("10.244.0.0/24")
    kube_proxy: str = "iptables"  # or the reason it is not running
    _lock: int | None = None
    _chains_before: set[tuple[str, str, str]] = field(default_factory=set)

    @property
    def node_ip(self) -> str:
        return str(self.pod_network.network_address + 1)

    @property
    def socket(self) -> pathlib.Path:
        return self.workdir / "containerd" / "containerd.sock"

    @classmethod
    @contextmanager
    def start(cls, workdir: pathlib.Path | None = None) -> Iterator[Node]:
        """The node's network first, then a control plane of its own in node mode whose API
        server listens on the node's address (``node.plane``), then the node."""
        reason = unavailable_reason()
        if reason:
            raise NodeUnavailable(reason)
        missing = missing_packages()
        if missing:
            raise NodeError(
                f"missing Debian packages {' '.join(missing)}: run `make node-deps` (apt-get)"
            )
        bin_dir = build()
        folder = workdir or pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-node-"))
        node = cls(bin_dir=bin_dir, workdir=folder)
        atexit.register(node.stop)
        previous = _stop_on_sigterm()
        try:
            node._take_lock()
            node._chains_before = _kube_chains()
            node.pod_network = _pod_network()
            node.bridge = f"sg{os.getpid() % 100000:05d}{random.randrange(16**4):04x}"
            node._network()
            with ControlPlane.start(node_mode=True, api_host=node.node_ip) as plane:
                node.plane = plane
                try:
                    node._launch()
                    yield node
                finally:
                    node.stop_components()
        finally:
            node.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    # -- start -------------------------------------------------------------------------

    def _take_lock(self, timeout: float = 240) -> None:
        self._lock = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeError(f"another node holds {LOCK} for over {timeout}s") from None
                time.sleep(1)

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
            )

    def _launch(self) -> None:
        self._containerd()
        self.import_image(images.pause_archive(self.workdir, self.bin_dir / "pause"))
        self._kubelet()
        self._scheduler()
        self._kube_proxy()
        self.wait_ready()

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if check and done.returncode != 0:
            raise NodeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done

    def _network(self) -> None:
        """The pod bridge, created here (not by CNI) so that the node's address exists
        before the kubelet starts: the kubelet listens on it and reports it as InternalIP."""
        prefix = self.pod_network.prefixlen
        self._run("ip", "link", "add", self.bridge, "type", "bridge")
        self._run("ip", "addr", "add", f"{self.node_ip}/{prefix}", "dev", self.bridge)
        self._run("ip", "link", "set", self.bridge, "up")
        # Service addresses route to our bridge: should kube-proxy not translate one, the
        # packet stays on this host instead of leaving by the default route.
        self._run("ip", "route", "add", SERVICE_RANGE, "dev", self.bridge)
        net_d = self.workdir / "cni" / "net.d"
        net_d.mkdir(parents=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "smtpgate",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,  # pods talk to this host only
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.pod_network), "gateway": self.node_ip}]],
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                        # no default route: pods reach their subnet, this node's address
                        # (the API server), Services and the outside clients' ranges
                        "routes": [{"dst": r} for r in (SERVICE_RANGE, *OUTSIDE_RANGES)],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (net_d / "10-smtpgate.conflist").write_text(json.dumps(conflist, indent=2))

    def _containerd(self) -> None:
        base = self.workdir / "containerd"
        base.mkdir()
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  disable_apparmor = true
  enable_selinux = false
  # this host will not let anyone lower oom_score_adj (kubelet asks -998 for sandboxes)
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{os.environ.get("SMTPGATE_RUNC", shutil.which("runc"))}"
        Root = "{base / "runc"}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.workdir / "cni" / "net.d"}"
    max_conf_num = 1
"""
        (base / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", "--config", str(base / "config.toml")])
        self._wait(
            lambda: self.socket.exists() and self._crictl("info", check=False).returncode == 0,
            "containerd",
            60,
        )

    def _crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        endpoint = f"unix://{self.socket}"
        return self._run(
            str(self.bin_dir / "crictl"),
            "--runtime-endpoint",
            endpoint,
            "--image-endpoint",
            endpoint,
            "--timeout",
            "30s",
            *args,
            check=check,
        )

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("ctr", "--address", str(self.socket), "-n", "k8s.io", *args, check=check)

    def import_image(self, archive: pathlib.Path) -> None:
        """Load an OCI (or docker-archive) tar into containerd's k8s.io namespace, unpacked
        for the CRI's snapshotter, so pods can use it with imagePullPolicy Never/IfNotPresent."""
        self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive))

    def _pki(self) -> tuple[pathlib.Path, pathlib.Path]:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        pki = self.plane.workdir / "pki"
        ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            _name(f"system:node:{self.name}", "system:nodes"),
            key,
            (ca.subject, ca_key),
            client=True,
        )
        mine = self.workdir / "pki"
        mine.mkdir()
        _write_pem(mine / "kubelet-client.crt", cert=cert)
        _write_pem(mine / "kubelet-client.key", key=key)
        serving_key = ec.generate_private_key(ec.SECP256R1())
        serving = _issue(
            _name(self.name), serving_key, (ca.subject, ca_key), server_ips=(self.node_ip,)
        )
        _write_pem(mine / "kubelet.crt", cert=serving)
        _write_pem(mine / "kubelet.key", key=serving_key)
        return mine / "kubelet-client.crt", mine / "kubelet-client.key"

    def _kubelet(self) -> None:
        crt, key = self._pki()
        pki = self.plane.workdir / "pki"
        kubeconfig = self.workdir / "kubelet.kubeconfig"
        kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: smtpgate
  cluster: {{server: "{self.plane.server}", certificate-authority: "{pki / "ca.crt"}"}}
users:
- name: kubelet
  user: {{client-certificate: "{crt}", client-key: "{key}"}}
contexts:
- name: kubelet
  context: {{cluster: smtpgate, user: kubelet}}
current-context: kubelet
"""
        )
        (self.workdir / "resolv.conf").write_text("search cluster.local\noptions ndots:1\n")
        self.kubelet_port, self.kubelet_healthz = free_port(self.node_ip), free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.kubelet_healthz,
            "tlsCertFile": str(self.workdir / "pki" / "kubelet.crt"),
            "tlsPrivateKeyFile": str(self.workdir / "pki" / "kubelet.key"),
            # The API server reaches the kubelet (logs, exec) without a client cert here.
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "resolvConf": str(self.workdir / "resolv.conf"),
            "clusterDomain": "cluster.local",
            "podLogsDir": str(self.workdir / "pod-logs"),
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "maxPods": 60,
            "podCIDR": str(self.pod_network),
            "registerNode": True,
            "rotateCertificates": False,
            "serializeImagePulls": False,
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
            "shutdownGracePeriod": "0s",
            "localStorageCapacityIsolation": True,
            "protectKernelDefaults": False,
            "enableServer": True,
            "logging": {"format": "text"},
        }
        (self.workdir / "kubelet.yaml").write_text(json.dumps(config, indent=2))
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={self.workdir / 'kubelet.yaml'}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--cert-dir={self.workdir / 'kubelet-certs'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                "--v=2",
            ],
        )

    def _scheduler(self) -> None:
        kubeconfig = str(self.plane.kubeconfig)
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.plane.kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": str(self.pod_network),
            "hostnameOverride": self.name,
            "bindAddress": self.node_ip,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # NodePorts on the node's bridge address only, never on the host's interfaces.
            "nodePortAddresses": [f"{self.node_ip}/32"],
            # leave the host's conntrack sysctls alone
            "conntrack": {"maxPerCore": 0, "min": 0},
        }
        (self.workdir / "kube-proxy.yaml").write_text(json.dumps(config, indent=2))
        self._spawn(
            "kube-proxy",
            [
                str(self.bin_dir / "kube-proxy"),
                f"--config={self.workdir / 'kube-proxy.yaml'}",
                "--v=2",
            ],
        )

    def _wait(self, ready, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None and name != "kube-proxy":
                    raise NodeError(self._failure(f"{name} exited with {proc.returncode}"))
            if ready():
                return
            time.sleep(0.5)
        raise NodeError(self._failure(f"{what} not ready after {timeout}s"))

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(
            self.plane.kubectl, "--kubeconfig", str(self.plane.kubeconfig), *args, check=check
        )

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            done = self.kubectl(
                "get",
                "node",
                self.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            )
            return done.stdout.strip() == "True"

        self._wait(ready, f"node {self.name}", timeout)
        proxy = self.processes.get("kube-proxy")
        if proxy is not None and proxy.poll() is not None:
            self.kube_proxy = self._failure(f"kube-proxy exited with {proxy.returncode}")

    def _failure(self, what: str) -> str:
        lines = [what]
        for name in self.processes:
            log = self.workdir / f"{name}.log"
            tail = log.read_text(errors="replace").splitlines()[-25:] if log.exists() else []
            lines += [f"--- {name}.log (last {len(tail)} lines) ---", *tail]
        return "\n".join(lines)

    # -- stop --------------------------------------------------------------------------

    def _terminate(self, name: str, grace: float = 10) -> None:
        proc = self.processes.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_components(self) -> None:
        """The node's processes and pods (while the API server still runs)."""
        for name in ("kube-proxy", "kube-scheduler", "kubelet"):
            self._terminate(name)
        if "containerd" in self.processes and self.processes["containerd"].poll() is None:
            # Through CRI, so that CNI DEL removes each pod's veth, IP and portmap rules.
            pods = self._crictl("pods", "-q", check=False).stdout.split()
            for pod in pods:
                self._crictl("stopp", pod, check=False)
                self._crictl("rmp", "-f", pod, check=False)
        self._terminate("containerd")
        self._kill_shims()
        self._unmount()

    def stop(self) -> None:
        """Stop exactly what this node started and leave nothing behind on the host."""
        if not self.workdir.exists() and not self.processes:
            return
        self.stop_components()
        if self.kube_proxy == "iptables" and (self.bin_dir / "kube-proxy").exists():
            self._run(str(self.bin_dir / "kube-proxy"), "--cleanup", check=False)
        _remove_kube_chains(_kube_chains() - self._chains_before)
        if self.bridge:
            self._run("ip", "link", "del", self.bridge, check=False)
            self.bridge = ""
        self._remove_cgroups()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _kill_shims(self) -> None:
        """containerd-shim-runc-v2 processes outlive containerd by design; ours are the ones
        started with our socket as their -address."""
        mine = str(self.socket)
        for proc in pathlib.Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and mine.encode() in argv:
                with suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    def _unmount(self) -> None:
        prefix = str(self.workdir) + "/"
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def _remove_cgroups(self) -> None:
        """The kubelet's kubepods hierarchy in every controller, deepest first."""
        for root in pathlib.Path("/sys/fs/cgroup").iterdir():
            top = root / "kubepods"
            if not top.is_dir():
                continue
            folders = sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            )
            for folder in [*folders, top]:
                with suppress(OSError):
                    folder.rmdir()
