"""``python -m smtpgate.operator``: run the operator against the current kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

import kopf
from kubernetes import client, config

from . import handlers, leader


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smtpgate-operator", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="liveness/readiness endpoint URL"
    )
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    parser.add_argument("--no-leader-election", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    stop = threading.Event()
    if not args.no_leader_election:
        lease = leader.Lease(client.ApiClient(), args.lease_namespace)
        lease.acquire()
        threading.Thread(target=lambda: (lease.lost.wait(), stop.set()), daemon=True).start()
    assert handlers.configure  # the handlers register on import

    async def run() -> None:
        stop_flag: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def watch_stop() -> None:
            stop.wait()
            loop.call_soon_threadsafe(lambda: stop_flag.done() or stop_flag.set_result(None))

        loop = asyncio.get_running_loop()
        threading.Thread(target=watch_stop, daemon=True).start()
        await kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
            stop_flag=stop_flag,
        )

    asyncio.run(run())
    return 1 if stop.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
