"""``python -m smtpgate.receiver --config PATH``: run one server's receiver."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from typing import Any

from smtpgate.connectors import bindings
from smtpgate.connectors.config import ServerConfig

from . import delivery, journal, queue, reload, server, workers
from .health import HealthServer
from .protocol_log import EscapingFormatter, ProtocolLog

log = logging.getLogger("smtpgate.receiver")


def _port_map(text: str) -> dict[int, int]:
    pairs = {}
    for item in filter(None, text.split(",")):
        configured, _, actual = item.partition("=")
        pairs[int(configured)] = int(actual)
    return pairs


def _explicit(items: list[str]) -> dict[str, tuple[str, int]]:
    plan = {}
    for item in items:
        binding, _, target = item.partition("=")
        host, _, port = target.rpartition(":")
        plan[bindings.normalise(binding)] = (host.strip("[]"), int(port))
    return plan


def _workers(text: str) -> str:
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError("must be a number of at least 1, or auto")
    return text


def _mebibytes(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("must be a whole number of MiB, 0 or more")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smtpgate-receiver", description=__doc__)
    parser.add_argument("--config", required=True, help="ServerConfig JSON (the ConfigMap's file)")
    parser.add_argument(
        "--spool", help="maildir spool folder (overrides the config's next hop path)"
    )
    parser.add_argument(
        "--spool-sync",
        choices=("filesystem", "file"),
        help="how a maildir group commit reaches stable storage (overrides the config's "
        "nextHop.sync): filesystem (one journal commit where the journal orders data, "
        "else one syncfs) or file (an fsync per message file)",
    )
    parser.add_argument(
        "--spool-journal-mib",
        type=_mebibytes,
        default=journal.LIMIT_BYTES >> 20,
        metavar="MIB",
        help="the most each worker's spool journal may grow to, in MiB; 0: no journal, "
        "each group of messages committed as files (default %(default)s)",
    )
    parser.add_argument("--listen-v4", help="listen here for 0.0.0.0 bindings (tests, demo)")
    parser.add_argument("--listen-v6", help="listen here for [::] bindings (tests, demo)")
    parser.add_argument("--port-map", default="", help="configured=actual ports, comma separated")
    parser.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="BINDING=HOST:PORT",
        help="serve a binding on another address, e.g. 192.0.2.10:25=0.0.0.0:10025",
    )
    parser.add_argument(
        "--files-root", help="read the config's certificate and user files under here"
    )
    parser.add_argument("--health-host", default="0.0.0.0")
    parser.add_argument("--health-port", type=int, default=0, help="/healthz, /readyz, /metrics")
    parser.add_argument(
        "--protocol-log", default="-", help="receive protocol log file (rotated), or - for stdout"
    )
    parser.add_argument(
        "--proxy-timeout",
        type=float,
        default=server.PROXY_TIMEOUT,
        help="seconds a trusted proxy has for its whole PROXY header (Required mode, or once "
        "a header has begun)",
    )
    parser.add_argument(
        "--proxy-optional-wait",
        type=float,
        default=server.PROXY_OPTIONAL_WAIT,
        help="Optional mode: seconds the banner waits for a trusted proxy's header to begin",
    )
    parser.add_argument("--grace-seconds", type=float, default=30, help="SIGTERM grace period")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--workers",
        default="1",
        type=_workers,
        help="worker processes sharing the ports (a number, or auto: one per CPU the process "
        "may run on, no more than its cgroup's CPU quota)",
    )
    parser.add_argument(
        "--cpu-affinity",
        choices=("auto", "none"),
        default="auto",
        help="auto: with a worker for every CPU the process may run on (and no smaller CPU "
        "quota), each worker keeps to its own CPU; none: the kernel places them",
    )
    parser.add_argument("--pin-cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def load(path: str) -> ServerConfig:
    with open(path, "rb") as handle:
        return ServerConfig.from_json(handle.read())


async def run(args: argparse.Namespace) -> int:
    config = load(args.config)

    def deliveries(config: ServerConfig) -> delivery.Delivery:
        return delivery.from_next_hop(
            config.next_hop,
            args.spool,
            helo=config.fqdn,
            spool_sync=args.spool_sync,
            journal_bytes=args.spool_journal_mib << 20,
        )

    plog = ProtocolLog(args.protocol_log)
    runtime = server.Runtime(
        config,
        deliveries(config),
        files_root=args.files_root,
        protocol_log=plog,
        deliveries=deliveries,
        proxy_timeout=args.proxy_timeout,
        proxy_optional_wait=args.proxy_optional_wait,
    )
    listen = server.Listen(
        args.listen_v4,
        args.listen_v6,
        _port_map(args.port_map),
        explicit=_explicit(args.bind),
        reuse_port=args.reuse_port,
    )
    receiver = server.Receiver(runtime, listen)
    await receiver.start()
    # What start-up made (modules, the config) lives as long as the process: kept out of
    # the collector's full passes, which otherwise walk it all again and again.
    gc.freeze()
    health = HealthServer(
        lambda: receiver.serving and not stopping.is_set(),
        lambda: _queue_report(runtime),
        lambda: _spool_report(runtime),
    )
    stopping = asyncio.Event()
    watcher = asyncio.create_task(reload.Watcher(args.config, receiver).run())
    if args.health_port:
        await health.start(args.health_host, args.health_port)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    _ready(args)
    await stopping.wait()
    log.info("stopping: new connections refused, sessions get %ss", args.grace_seconds)
    watcher.cancel()
    await receiver.stop(grace=args.grace_seconds)
    for retired in [*runtime.retired(), runtime.delivery]:
        await asyncio.to_thread(retired.close)
    await asyncio.to_thread(plog.close)
    await health.stop()
    return 0


def _queue_report(runtime: server.Runtime) -> dict[str, float] | None:
    """The queue's last scan for /queue; None unless the next hop is StoreAndForward."""
    if isinstance(runtime.delivery, queue.QueuedDelivery):
        return runtime.delivery.runner.last_scan or {}
    return None


def _spool_report(runtime: server.Runtime) -> dict[str, Any] | None:
    """The spool guard's last look for /spool, how the spool commits, and its journal;
    None unless the next hop spools (Maildir, StoreAndForward)."""
    spool = runtime.delivery
    if isinstance(spool, queue.QueuedDelivery):
        spool = spool.spool
    if isinstance(spool, delivery.MaildirDelivery):
        return {
            **spool.guard.report(),
            "groupCommit": spool.group_commit,
            "journal": spool.journal_report(),
        }
    return None


def _ready(args: argparse.Namespace) -> None:
    """Say that every listener is open: on the pipe the supervisor gave, or on stdout
    (stderr when stdout carries the protocol log)."""
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
        return
    print("ready", file=sys.stderr if args.protocol_log == "-" else sys.stdout, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    workers.pin(args.pin_cpu)  # a worker the supervisor gave a CPU, before any thread starts
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    # aiosmtpd logs every command line at INFO, AUTH payloads included: keep it quiet.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    plan = workers.plan(
        args.workers, args.cpu_affinity, sorted(os.sched_getaffinity(0)), workers.cpu_quota()
    )
    if plan.count > 1:
        return workers.supervise(_without_workers(argv), plan, lambda: _ready(args))
    with asyncio.Runner(loop_factory=server.new_event_loop) as runner:
        return runner.run(run(args))


def _without_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--workers":
            skip = True
        elif not item.startswith("--workers="):
            out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(main())
