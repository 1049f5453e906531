"""``python -m smtpgate.receiver --config PATH``: run one server's receiver."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from smtpgate.connectors.config import ServerConfig

from . import delivery, server
from .users import UserDatabase

log = logging.getLogger("smtpgate.receiver")


def _port_map(text: str) -> dict[int, int]:
    pairs = {}
    for item in filter(None, text.split(",")):
        configured, _, actual = item.partition("=")
        pairs[int(configured)] = int(actual)
    return pairs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smtpgate-receiver", description=__doc__)
    parser.add_argument("--config", required=True, help="ServerConfig JSON (the ConfigMap's file)")
    parser.add_argument(
        "--spool", help="maildir spool folder (overrides the config's next hop path)"
    )
    parser.add_argument("--listen-v4", help="listen here for 0.0.0.0 bindings (tests, demo)")
    parser.add_argument("--listen-v6", help="listen here for [::] bindings (tests, demo)")
    parser.add_argument("--port-map", default="", help="configured=actual ports, comma separated")
    parser.add_argument("--grace-seconds", type=float, default=30, help="SIGTERM grace period")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def load(path: str) -> ServerConfig:
    with open(path, "rb") as handle:
        return ServerConfig.from_json(handle.read())


async def run(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config.next_hop.type != "Maildir" and not args.spool:
        log.error("next hop type %s is not supported by this receiver", config.next_hop.type)
        return 2
    spool = delivery.MaildirDelivery(args.spool or config.next_hop.path)
    users = UserDatabase.load(config.user_database_file) if config.user_database_file else None
    runtime = server.Runtime(config, spool, users)
    listen = server.Listen(args.listen_v4, args.listen_v6, _port_map(args.port_map))
    receiver = server.Receiver(runtime, listen)
    await receiver.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    print("ready", flush=True)
    await stopping.wait()
    log.info("stopping: new connections refused, sessions get %ss", args.grace_seconds)
    await receiver.stop(grace=args.grace_seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiosmtpd logs every command line at INFO, AUTH payloads included: keep it quiet.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
