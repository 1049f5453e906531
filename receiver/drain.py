"""``python -m smtpgate.receiver.drain --spool DIR --next-hop smtp://HOST:PORT``: deliver a
spool that no receiver serves any more (the claim of a replica that went away for good)
to a next hop, with the queue's own rules (per-recipient records, notices for refusals),
then exit: 0 once the spool holds no message, 1 when some are still there after
``--wait`` seconds (their records in ``state/`` say why), 2 for a spool it cannot use."""

from __future__ import annotations

import argparse
import logging
import pathlib
import socket
import sys
import time
import urllib.parse

from smtpgate.connectors.enums import NextHopTls
from smtpgate.connectors.specs import QueueSettings

from . import delivery, spool_journal, spoolfile
from .queue import QueueRunner
from .relay import RelayDelivery

log = logging.getLogger("smtpgate.receiver.drain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smtpgate-drain", description=__doc__)
    parser.add_argument("--spool", required=True, help="the spool folder (tmp/, new/, cur/)")
    parser.add_argument("--next-hop", required=True, help="smtp://HOST:PORT or lmtp://HOST:PORT")
    parser.add_argument("--helo", default=socket.getfqdn(), help="name for EHLO and notices")
    parser.add_argument("--wait", type=float, default=600, help="seconds to keep trying")
    parser.add_argument("--retry-seconds", type=int, default=5)
    parser.add_argument(
        "--expiration-seconds",
        type=int,
        default=QueueSettings().expiration_seconds,
        help="return messages older than this to their senders (the server's setting)",
    )
    parser.add_argument(
        "--tls",
        default=NextHopTls.Opportunistic.value,
        choices=[mode.value for mode in NextHopTls],
        help="STARTTLS to the next hop: give the server's nextHop.tls",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def next_hop(text: str) -> tuple[str, int, bool]:
    """host, port and whether it speaks LMTP, from ``smtp://host:port``."""
    url = urllib.parse.urlsplit(text)
    if url.scheme not in ("smtp", "lmtp") or not url.hostname or not url.port:
        raise ValueError(f"--next-hop must be smtp://HOST:PORT or lmtp://HOST:PORT, not {text}")
    return url.hostname, url.port, url.scheme == "lmtp"


def drain(
    root: pathlib.Path, relay: RelayDelivery, settings: QueueSettings, helo: str, wait: float
) -> int:
    """Messages left in the spool once it is empty or ``wait`` seconds have passed."""
    runner = QueueRunner(root, relay, settings, helo, scan_seconds=1)
    runner.start()
    deadline = time.monotonic() + wait
    try:
        while True:
            left = len(spoolfile.names(root))
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)
    finally:
        runner.stop()
        relay.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    root = pathlib.Path(args.spool)
    try:
        host, port, lmtp = next_hop(args.next_hop)
    except ValueError as err:
        log.error("%s", err)
        return 2
    if not (root / "new").is_dir():
        log.error("%s is not a spool: it has no new/ folder", root)
        return 2
    settings = QueueSettings(
        retry_seconds=args.retry_seconds,
        max_retry_seconds=max(args.retry_seconds, 30),
        expiration_seconds=args.expiration_seconds,
    )
    try:  # what a spool journal holds first: a replica whose node went down
        spool = delivery.MaildirDelivery(root, journal_bytes=0)
        spool_journal.recover(spool)
        spool.close()
    except (OSError, ValueError) as err:
        log.error("%s: its journal cannot be recovered: %s", root, err)
        return 2
    before = len(spoolfile.names(root))
    log.info("draining %d messages from %s to %s", before, root, args.next_hop)
    relay = RelayDelivery(host, port, lmtp=lmtp, helo=args.helo, tls=NextHopTls(args.tls))
    left = drain(root, relay, settings, args.helo, args.wait)
    if left:
        log.error("%s still holds %d message(s) after %gs (see state/)", root, left, args.wait)
        return 1
    log.info("drained: %s holds no message", root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
