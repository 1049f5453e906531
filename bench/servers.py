"""The servers the receiver benchmarks run side by side, each in a cpuacct cgroup of its own.

smtpgate's receiver (Internet connector policy, maildir spool with its journal and group
commit, or relay to Postfix's smtp-sink) and Postfix's smtpd with its queue (cleanup fsyncs
the queue file before the 250) delivering to the discard transport. Both keep their spool
on the same filesystem, and neither writes a line per message to a file: smtpgate's
protocol log is off (the Internet connector's default) and its own log is at WARNING;
Postfix logs to syslog, and where no syslog daemon listens (no /dev/log) its lines are
dropped. ``describe`` says so for
the run at hand, with every setting that differs from either server's defaults."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLK = os.sysconf("SC_CLK_TCK")
CPUACCT = pathlib.Path("/sys/fs/cgroup/cpuacct")
CPU = pathlib.Path("/sys/fs/cgroup/cpu")
WEIGHTED = True  # each server in a cpu cgroup of the default weight too (see Cgroup)
WORKERS = len(os.sched_getaffinity(0))  # the receiver's --workers auto (without a CPU quota)
# Postfix settings that differ from its defaults, besides where its files are.
POSTFIX_SETTINGS = {
    "in_flow_delay": "0",  # no pause before a message when the queue grows (default 1s)
    "smtpd_client_connection_count_limit": "0",  # anvil's per-client limits off, as the
    "smtpd_client_connection_rate_limit": "0",  # receiver's per-source limits are raised
    "default_process_limit": "150",  # enough smtpd processes for 50 sessions and more
    "default_transport": "discard",
    "relay_transport": "discard",
    "local_transport": "discard",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


class Cgroup:
    """A cpuacct cgroup (v1) that a server and all its children run in, so that the CPU of
    short-lived processes (Postfix's smtpd, cleanup) is counted too. Where none can be
    made, the CPU of the processes found in /proc (and their waited-for children) instead.

    With ``WEIGHTED`` (the default; ``--no-cpu-weight`` turns it off) the server also
    runs in a cgroup of the cpu controller with the default weight (cpu.shares 1024): on
    a machine that other work keeps busy, each server then gets the same share of the
    CPU whatever its number of processes (Postfix's 50 smtpd processes at c=50 would
    otherwise get 25 times the share of smtpgate's 2 workers). On an idle machine the
    weight changes nothing."""

    def __init__(self, name: str) -> None:
        self.path: pathlib.Path | None = CPUACCT / f"smtpgate-bench-{os.getpid()}-{name}"
        try:
            self.path.mkdir()
        except OSError:
            self.path = None
        self.weighted: pathlib.Path | None = None
        if WEIGHTED:
            self.weighted = CPU / f"smtpgate-bench-{os.getpid()}-{name}"
            try:
                self.weighted.mkdir()
            except OSError:
                self.weighted = None
        self.pids: Callable[[], list[int]] = list

    @property
    def exact(self) -> bool:
        return self.path is not None

    def enter(self) -> None:
        """Put the calling process in the group (a preexec_fn: children inherit it)."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))
        if self.weighted is not None:
            (self.weighted / "cgroup.procs").write_text(str(os.getpid()))

    def cpu_seconds(self) -> float:
        if self.path is not None:
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        total = 0.0
        for pid in self.pids():
            try:
                fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(f) for f in fields[11:15]) / CLK
        return total

    def members(self) -> list[int]:
        if self.path is None:
            return self.pids()
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        for path in (self.path, self.weighted):
            for _ in range(50 if path is not None else 0):
                try:
                    path.rmdir()  # type: ignore[union-attr]
                    break
                except OSError:
                    time.sleep(0.1)


@dataclass
class Server:
    name: str
    port: int
    cgroup: Cgroup
    stop: Callable[[], None]
    settings: list[str] = field(default_factory=list)
    spool: pathlib.Path | None = None  # where an accepted message appears (maildir new/)
    drained: Callable[[], bool] = lambda: True  # no message still in the server's queue

    def close(self) -> None:
        self.stop()
        self.cgroup.remove()


def _tree(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(p) for p in path.read_text().split()] if path.exists() else []
    return [pid, *children]


def filesystem(path: pathlib.Path) -> str:
    """The filesystem ``path`` is on: type, device, mount point, options, and whether its
    journal orders data (the receiver's spool then commits a group once, else twice)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from smtpgate.receiver import delivery

    found = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,SOURCE,TARGET,OPTIONS", "-T", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    journal = "journal orders data" if delivery.orders_data(path) else "no ordering journal"
    return f"{found.stdout.strip() or '?'} ({journal})"


@contextlib.contextmanager
def spool_volume(size: str = "4G") -> Iterator[pathlib.Path]:
    """A folder for every server's spool and queue, on an ext4 made for the run (mkfs's
    defaults: a journal, data=ordered) in a sparse file on a loop device, as a spool
    volume usually is. Where none can be mounted (not root, no loop device), a folder in
    the temporary directory, and the configuration printed says which filesystem that is.

    A filesystem of its own keeps the runs comparable: on an ext4 without a journal (this
    machine's root), creating a file costs a look at every inode of its block group
    deleted in the last five minutes, and the bench deletes each run's messages, so a
    server's CPU per message doubled from one round to the next on the same spool."""
    # /var/tmp: on disk where /tmp may be a tmpfs (a loop device on memory syncs nothing).
    base = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-bench-", dir="/var/tmp"))
    base.chmod(0o755)  # Postfix's daemons run as the postfix user
    image, mount = base / "volume.img", base / "volume"
    try:
        mount.mkdir()
        if os.geteuid() == 0 and shutil.which("mkfs.ext4") and shutil.which("losetup"):
            subprocess.run(["truncate", "-s", size, str(image)], check=True)
            # Inode tables and journal written now, not by ext4lazyinit during the runs.
            lazy = "lazy_itable_init=0,lazy_journal_init=0"
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E", lazy, str(image)], check=True)
            subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True)
        yield mount
    finally:
        for _ in range(40):  # a server's last process may still be ending
            if not os.path.ismount(mount):
                break
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
                time.sleep(0.25)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        if not os.path.ismount(mount):
            shutil.rmtree(base, ignore_errors=True)


def start_smtpgate(
    work: pathlib.Path,
    mode: str = "maildir",
    sink_port: int | None = None,
    workers: int = WORKERS,
    max_connections: int = 5000,
    extra: tuple[str, ...] = (),
    tree: str | None = None,
) -> Server:
    """The receiver; ``tree`` is another copy of its source (a folder holding
    smtpgate/receiver and smtpgate/connectors) to run instead of this one."""
    sys.path.insert(0, str(ROOT))
    from smtpgate.connectors import config, specs

    label = mode if tree is None else f"{mode}-{pathlib.Path(tree).name}"
    spool = work / f"spool-{label}"
    next_hop: dict[str, object] = {"type": "Maildir", "path": str(spool)}
    if mode == "relay":
        next_hop = {"type": "Smtp", "host": "127.0.0.1", "port": sink_port}
    server = specs.TransportServerSpec.model_validate(
        {"fqdn": "bench.contoso.com", "nextHop": next_hop}
    )
    policy = {
        "server": "bench",
        "usage": "Internet",
        "bindings": ["0.0.0.0:25"],
        "maxInboundConnection": max_connections,
        "maxInboundConnectionPerSource": max_connections,
        "maxInboundConnectionPercentagePerSource": 100,
        "tarpitIntervalSeconds": 0,
    }
    connector = specs.ReceiveConnectorSpec.model_validate(policy)
    compiled = config.compile_server(
        "bench",
        "bench",
        server,
        [("Internet", connector)],
        [specs.AcceptedDomainSpec(domain_name="contoso.com")],
    )
    config_file = work / f"config-{label}.json"
    config_file.write_text(compiled.config.to_json())
    port = free_port()
    args = [
        "--config",
        str(config_file),
        "--listen-v4",
        "127.0.0.1",
        "--port-map",
        f"25={port}",
        "--protocol-log",
        os.devnull,
        "--log-level",
        "WARNING",
        "--workers",
        str(workers),
        *extra,
    ]
    cgroup = Cgroup(f"smtpgate-{label}")
    log = open(work / f"receiver-{label}.log", "wb")  # noqa: SIM115 - closed with the process
    env = dict(os.environ, PYTHONPATH=tree) if tree is not None else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpgate.receiver", *args],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        preexec_fn=cgroup.enter,  # noqa: PLW1509 - only writes its own pid to a cgroup file
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":  # every worker listens
        raise RuntimeError(f"the receiver did not start; see {work}/receiver-{label}.log")
    wait_port(port)
    cgroup.pids = lambda: _tree(proc.pid)

    def stop() -> None:
        proc.terminate()
        proc.wait(30)
        log.close()
        proc.stdout.close()  # type: ignore[union-attr]

    shown = {k: v for k, v in policy.items() if k not in ("server", "bindings")}
    logged = compiled.config.connectors[0].protocol_logging_level.value
    settings = [
        "python -m smtpgate.receiver " + " ".join(args),
        f"workers: {placement(workers, extra)}"
        if tree is None
        else f"workers: {workers}, placed as that tree's receiver places them",
        f"connector: {shown} (protocol log: {logged})",
        f"next hop: {next_hop}; spool filesystem: {filesystem(work)}",
        f"spool journal: {journal_setting(work, extra) if tree is None else 'as that tree has'}",
    ]
    return Server(
        f"smtpgate {label}" if tree is None else f"smtpgate {mode} ({tree})",
        port,
        cgroup,
        stop,
        settings,
        spool=spool / "new" if mode == "maildir" else None,
    )


def journal_setting(work: pathlib.Path, extra: tuple[str, ...] = ()) -> str:
    """Whether the receiver's spool journal is used here (``--spool-journal-mib``, and a
    filesystem it is used on), as the receiver decides it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from smtpgate.receiver import delivery, journal

    if "--spool-journal-mib" in extra:
        mib = int(extra[extra.index("--spool-journal-mib") + 1])
    else:
        mib = journal.LIMIT_BYTES >> 20
    if mib == 0:
        return "off (--spool-journal-mib 0): each group committed as files"
    if not delivery.journal_pays(work):
        return "none on this filesystem: each group committed as files"
    return (
        f"on, up to {mib} MiB per worker: a message durable at its record's fdatasync, "
        f"files checkpointed every {journal.CHECKPOINT_SECONDS} s"
    )


def placement(workers: int, extra: tuple[str, ...] = ()) -> str:
    """How the receiver places ``workers`` workers here (``--cpu-affinity``, its default
    unless ``extra`` names it), as the receiver works it out."""
    sys.path.insert(0, str(ROOT))
    from smtpgate.receiver import workers as placing

    affinity = extra[extra.index("--cpu-affinity") + 1] if "--cpu-affinity" in extra else "auto"
    plan = placing.plan(
        str(workers), affinity, sorted(os.sched_getaffinity(0)), placing.cpu_quota()
    )
    return f"{plan.count}, {plan.reason}"


def start_sink(work: pathlib.Path) -> Server:
    port = free_port()
    cgroup = Cgroup("sink")
    proc = subprocess.Popen(
        ["smtp-sink", "-u", "postfix", "-c", f"127.0.0.1:{port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=cgroup.enter,  # noqa: PLW1509
    )
    wait_port(port)
    cgroup.pids = lambda: [proc.pid]

    def stop() -> None:
        proc.terminate()
        proc.wait(10)

    return Server("postfix smtp-sink (discard)", port, cgroup, stop, ["smtp-sink -c 1024"])


def start_floor(work: pathlib.Path, workers: int = WORKERS) -> Server:
    """bench/floor_server.py: the least a Python server on uvloop does per message with the
    receiver's own spool (a reference, see its docstring), as many workers as the receiver."""
    port, spool = free_port(), work / "spool-floor"
    cgroup = Cgroup("floor")
    args = [str(ROOT / "bench" / "floor_server.py"), str(port), str(spool), str(workers)]
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=cgroup.enter,  # noqa: PLW1509
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()  # its workers end with it
        proc.wait(10)
        raise RuntimeError("bench/floor_server.py did not start")
    cgroup.pids = lambda: _tree(proc.pid)

    def stop() -> None:
        proc.terminate()  # it stops its workers
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]

    settings = [
        "python bench/" + " ".join(a.rsplit("/", 1)[-1] if a.endswith(".py") else a for a in args),
        "no policy, no header work, no log, fixed replies; each message handed to the "
        "receiver's MaildirDelivery (its journal and group commit) before the 250",
        f"workers: {placement(workers)} (placed as the receiver places its own)",
    ]
    return Server("python floor", port, cgroup, stop, settings, spool / "new")


def start_postfix(work: pathlib.Path, **more: str) -> Server:
    """Postfix's smtpd and queue; ``more``: main.cf settings on top of the bench's."""
    conf = work / "postfix"
    conf.mkdir()
    work.chmod(0o755)  # Postfix's daemons run as the postfix user
    (work / "postfix-queue").mkdir()
    (work / "postfix-data").mkdir()
    shutil.chown(work / "postfix-data", "postfix")
    port = free_port()
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": f"{work}/postfix-queue",
        "data_directory": f"{work}/postfix-data",
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "bench.localdomain",
        "mydestination": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relay_domains": "contoso.com",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
        **POSTFIX_SETTINGS,
        **more,
    }
    (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    master = pathlib.Path("/etc/postfix/master.cf").read_text()
    smtpd = f"127.0.0.1:{port} inet n - y - - smtpd"
    master = re.sub(r"^smtp\s+inet\s.*$", smtpd, master, flags=re.M)
    (conf / "master.cf").write_text(master)
    cgroup = Cgroup("postfix")
    started = subprocess.run(
        ["postfix", "-c", str(conf), "start"],
        capture_output=True,
        text=True,
        preexec_fn=cgroup.enter,  # noqa: PLW1509
    )
    if started.returncode != 0:
        raise RuntimeError(f"postfix did not start: {started.stderr}")
    wait_port(port)
    cgroup.pids = lambda: _postfix_pids(conf)
    queue = work / "postfix-queue"

    def drained() -> bool:
        return not any(
            any((queue / sub).rglob("*"))
            for sub in ("maildrop", "incoming", "active", "deferred")
            if (queue / sub).exists()
        )

    def stop() -> None:
        subprocess.run(["postfix", "-c", str(conf), "stop"], check=False, capture_output=True)
        time.sleep(1)

    postconf = subprocess.run(
        ["postconf", "-c", str(conf), "-n"], capture_output=True, text=True, check=False
    ).stdout.split("\n")
    logging = (
        "syslog, and no syslog daemon listens here (no /dev/log): lines dropped"
        if not os.path.exists("/dev/log")
        else "syslog (/dev/log exists: a syslog daemon may write its lines to a file)"
    )
    return Server(
        "postfix smtpd + queue (fsync)",
        port,
        cgroup,
        stop,
        [
            f"Postfix {_postfix_version()}, main.cf (postconf -n):",
            *(f"  {line}" for line in postconf if line),
            f"master.cf: {smtpd}  (Debian's master.cf otherwise)",
            f"logging: {logging}",
            "durability: cleanup fsyncs each queue file before smtpd's 250 (not configurable)",
            f"queue filesystem: {filesystem(work)}",
        ],
        drained=drained,
    )


def _postfix_version() -> str:
    found = subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip()


def _postfix_pids(conf: pathlib.Path) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(conf) in cmdline or "/usr/lib/postfix/sbin/" in cmdline:
            pids.append(int(entry.name))
    return pids


def smtpgate_logging() -> str:
    return "protocol log off (the Internet connector's default), receiver log at WARNING"
