"""``/healthz``, ``/readyz``, ``/queue``, ``/spool`` and Prometheus ``/metrics`` on a port of
their own."""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)


@functools.lru_cache(maxsize=4096)
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per label values: a session uses the
    same few children every time, and ``labels`` validates and locks on every call. Label
    values are connector names, reply codes and reasons (bounded by the config); a value
    beyond the cache's bound only costs the lookup again."""
    return metric.labels(*values)


SESSIONS = Counter("smtpgate_sessions_total", "SMTP sessions opened", ["connector"])
SESSIONS_OPEN = Gauge(
    "smtpgate_sessions_open",
    "SMTP sessions open now",
    ["connector"],
    multiprocess_mode="livesum",  # summed over live workers (see metrics_text)
)
REFUSED_CONNECTIONS = Counter(
    "smtpgate_connections_refused_total", "Connections refused at connect", ["reason"]
)
MESSAGES_ACCEPTED = Counter(
    "smtpgate_messages_accepted_total", "Messages answered 250", ["connector"]
)
MESSAGES_REFUSED = Counter(
    "smtpgate_messages_refused_total", "MAIL, RCPT or DATA refusals", ["connector", "reason"]
)
BYTES_ACCEPTED = Counter(
    "smtpgate_bytes_accepted_total", "Bytes of accepted messages", ["connector"]
)
SESSIONS_DROPPED = Counter(
    "smtpgate_sessions_dropped_total",
    "Sessions the receiver closed for misbehaviour (pregreet, junk-commands)",
    ["connector", "reason"],
)
SPOOL_GROUP = Histogram(
    "smtpgate_spool_commit_messages",
    "Messages made durable together by one maildir group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PROTOCOL_LOG_DROPPED = Counter(
    "smtpgate_protocol_log_dropped_total",
    "Protocol log lines dropped because the log's destination did not keep up",
)
PROXY_REJECTED = Counter(
    "smtpgate_proxy_rejected_total",
    "Connections closed without a banner for their PROXY protocol header (untrusted, "
    "malformed, truncated, missing, timeout)",
    ["reason"],
)
CONFIG_RELOADS = Counter("smtpgate_config_reloads_total", "Config reloads", ["result"])
QUEUE_MESSAGES = Gauge(
    "smtpgate_queue_messages",
    "Messages in the StoreAndForward spool (at the last scan)",
    multiprocess_mode="livemax",  # every worker scans the same spool
)
QUEUE_OLDEST = Gauge(
    "smtpgate_queue_oldest_seconds",
    "Age of the oldest message in the StoreAndForward spool (at the last scan)",
    multiprocess_mode="livemax",
)
SPOOL_REFUSING = Gauge(
    "smtpgate_spool_refusing",
    "1 while new MAIL is refused because the spool volume is nearly full (452 4.3.1) or "
    "cannot be written (451 4.3.0), else 0",
    multiprocess_mode="livemax",  # every worker looks at the same volume
)
QUEUE_DELIVERED = Counter(
    "smtpgate_queue_delivered_total", "Recipients the next hop took from the queue"
)
QUEUE_DEFERRED = Counter(
    "smtpgate_queue_deferred_total",
    "Tries of a queued message that left recipients for later (unavailable: no answer "
    "from the next hop; temporary: it answered 4xx)",
    ["reason"],
)
QUEUE_BOUNCED = Counter(
    "smtpgate_queue_bounced_total",
    "Recipients returned to the sender (refused: the next hop answered 5xx; expired)",
    ["reason"],
)


def metrics_text() -> bytes:
    """This process's metrics; with ``--workers`` (PROMETHEUS_MULTIPROC_DIR set by the
    supervisor) every worker's, added up, so that one scrape sees all the traffic."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return bytes(generate_latest(registry))
    return bytes(generate_latest())


class HealthServer:
    """A minimal HTTP/1.0 endpoint; ``ready`` says whether the receiver takes mail,
    ``queue`` what the StoreAndForward queue held at its last scan (``/queue``, JSON: the
    operator reads it for the QueueHealthy condition), or None in other modes (404), and
    ``spool`` whether new MAIL is refused for the spool's sake and what its volume has free
    (``/spool``, JSON, for the SpoolHealthy condition), or None without a spool (404)."""

    def __init__(
        self,
        ready: Callable[[], bool],
        queue: Callable[[], dict[str, float] | None] = lambda: None,
        spool: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self.ready = ready
        self.queue = queue
        self.spool = spool
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _report(self, path: str) -> dict[str, Any] | None:
        return self.queue() if path == "/queue" else self.spool()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else "/"
            if path == "/healthz":
                status, body, kind = "200 OK", b"ok\n", "text/plain"
            elif path == "/readyz":
                ok = self.ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                body, kind = (b"ready\n" if ok else b"not ready\n"), "text/plain"
            elif path in ("/queue", "/spool") and (report := self._report(path)) is not None:
                status, body, kind = "200 OK", json.dumps(report).encode(), "application/json"
            elif path == "/metrics":
                status, body, kind = "200 OK", metrics_text(), CONTENT_TYPE_LATEST
            else:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
