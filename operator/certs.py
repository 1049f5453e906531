"""TLS Secrets as certificate candidates. Pure: takes Secret bodies, returns candidates."""

from __future__ import annotations

import base64
import functools
import logging
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from smtpgate.connectors import certificates

log = logging.getLogger(__name__)


def candidates(secrets: Iterable[dict[str, Any]]) -> list[certificates.Candidate]:
    """Every ``kubernetes.io/tls`` Secret whose ``tls.crt`` parses, with a private key."""
    found = []
    for secret in secrets:
        if secret.get("type") != "kubernetes.io/tls":
            continue
        data = secret.get("data") or {}
        if not data.get("tls.crt") or not data.get("tls.key"):
            continue
        candidate = _parse(secret["metadata"]["name"], data["tls.crt"])
        if candidate is not None:
            found.append(candidate)
    return found


@functools.lru_cache(maxsize=4096)
def _parse(name: str, crt: str) -> certificates.Candidate | None:
    """Parsed once per Secret content: reconciles run often, certificates change rarely."""
    try:
        leaf = x509.load_pem_x509_certificates(base64.b64decode(crt))[0]
    except (ValueError, IndexError) as err:
        log.warning("Secret %s: tls.crt does not parse: %s", name, err)
        return None
    return certificates.Candidate.from_certificate(name, leaf)
