"""``python -m smtpgate.operator``: run the operator against the in-cluster config or the
current kubeconfig. Health, readiness and metrics are served from the first second, leading
or not; SIGTERM stops within seconds and hands the Lease back."""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import json
import logging
import os
import signal
import socket
import sys
import threading
import urllib.parse
from typing import Any

from kubernetes import client, config
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import certs, controller, kube, leader

DEFAULT_IMAGE = "ghcr.io/smtpgate/receiver:0.1.0"


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
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="where /healthz, /readyz and /metrics are served (host and port of this URL)",
    )
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    parser.add_argument("--no-leader-election", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--workers", type=int, default=4, help="servers reconciled at the same time"
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(os.environ.get("SMTPGATE_RESYNC_SECONDS", "600")),
        help="every so often, look at every server again (from the cache; writes only drift)",
    )
    parser.add_argument(
        "--self-signed-validity-seconds",
        type=float,
        default=float(
            os.environ.get(
                "SMTPGATE_SELF_SIGNED_VALIDITY_SECONDS",
                str(certs.DEFAULT_VALIDITY.total_seconds()),
            )
        ),
        help="how long each server's self-signed certificate is valid (five years); it is "
        "renewed with a third of that left",
    )
    return parser.parse_args(argv)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the object concerned."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if obj := getattr(record, "object", None):
            entry["object"] = obj
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        obj = getattr(record, "object", None)
        return f"{line} [{obj}]" if obj else line


def _logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


def _serve_health(url: str, ctl: controller.Controller) -> http.server.ThreadingHTTPServer:
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname or "0.0.0.0", parsed.port or 8080

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                ok = ctl.alive()
                self._send(200 if ok else 500, b"ok\n" if ok else b"stuck\n")
            elif path == "/readyz":
                ok = ctl.synced()
                self._send(200 if ok else 503, b"ok\n" if ok else b"cache not synced\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            return

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("Server", (http.server.ThreadingHTTPServer,), {"address_family": family})
    server = server_class((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="health").start()
    return server


def _api_client(pool: int) -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool
    configuration.retries = False
    return client.ApiClient(configuration)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _logging(args.log_level, args.log_format)
    log = logging.getLogger("smtpgate.operator")
    identity = f"{socket.gethostname()}-{os.getpid()}"
    scopes = max(1, len(args.namespace))
    api_client = _api_client(pool=12 * scopes + args.workers + 4)
    lease = None
    if not args.no_leader_election:
        lease = leader.Lease(_api_client(pool=2), args.lease_namespace, identity=identity)
    api = kube.Api(
        api_client,
        gate=lease.leading if lease is not None else None,
        agent=f"smtpgate-operator/{identity}",
    )
    image = os.environ.get("SMTPGATE_RECEIVER_IMAGE", DEFAULT_IMAGE)
    ctl = controller.Controller(
        api,
        args.namespace,
        image,
        resync_seconds=args.resync_seconds,
        workers=args.workers,
        self_signed_validity=dt.timedelta(seconds=args.self_signed_validity_seconds),
        leading=lease.leading if lease is not None else (lambda: True),
    )
    health = _serve_health(args.liveness, ctl)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctl.start()
    if lease is not None:
        lease.on_change = ctl.on_leading
        lease.start()
    else:
        ctl.on_leading(True)
    log.info("watching %s as %s", ", ".join(args.namespace) or "all namespaces", identity)
    while not stop.wait(1):
        pass
    log.info("stopping")
    ctl.stop()
    if lease is not None:
        lease.stop(release=True)
    health.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
