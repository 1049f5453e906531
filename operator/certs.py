"""TLS Secrets as certificate candidates (pure: Secret bodies in, candidates out), and each
server's own self-signed certificate: read from its Secret, renewed with a third of its
life left, issued when missing."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from smtpgate.connectors import certificates, organization

log = logging.getLogger(__name__)


def candidates(secrets: Iterable[dict[str, Any]]) -> list[certificates.Candidate]:
    """Every ``kubernetes.io/tls`` Secret whose ``tls.crt`` parses, with a private key; the
    servers' self-signed certificates are not candidates (each serves its own server only,
    where nothing else is chosen)."""
    found = []
    for secret in secrets:
        if secret.get("type") != "kubernetes.io/tls" or is_self_signed(secret):
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


# -- the server's own self-signed certificate ------------------------------------------------

SELF_SIGNED_LABEL = "smtpgate.io/self-signed-for"
# Exchange's own self-signed certificate lasts five years; it is renewed with a third left.
DEFAULT_VALIDITY = dt.timedelta(days=5 * 365)
RENEW_AT = 2 / 3


def self_signed_name(server: str) -> str:
    return f"{server}-receiver-self-signed"


def is_self_signed(secret: dict[str, Any]) -> bool:
    return SELF_SIGNED_LABEL in ((secret.get("metadata") or {}).get("labels") or {})


@dataclass(frozen=True)
class SelfSigned:
    """A server's self-signed certificate as its Secret holds it."""

    secret_name: str
    certificate: x509.Certificate
    crt: bytes
    key: bytes

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def renew_after(self) -> dt.datetime:
        start = self.certificate.not_valid_before_utc
        return start + (self.not_after - start) * RENEW_AT

    def status(self) -> dict[str, str]:
        return {
            "secretName": self.secret_name,
            "notAfter": _stamp(self.not_after),
            "renewAfter": _stamp(self.renew_after),
            "sha256": organization.fingerprint(
                self.certificate.public_bytes(serialization.Encoding.DER)
            ),
        }


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_self_signed(secret: dict[str, Any] | None) -> SelfSigned | None:
    """The certificate in a server's self-signed Secret, or None when it is missing or
    does not parse."""
    if secret is None:
        return None
    data = secret.get("data") or {}
    try:
        crt = base64.b64decode(data.get("tls.crt") or "")
        key = base64.b64decode(data.get("tls.key") or "")
        certificate = x509.load_pem_x509_certificates(crt)[0]
    except (ValueError, IndexError):
        return None
    if not key:
        return None
    return SelfSigned(secret["metadata"]["name"], certificate, crt, key)


def usable(current: SelfSigned | None, fqdn: str, now: dt.datetime) -> bool:
    """Whether a self-signed certificate may keep serving: valid, not yet due for renewal,
    naming the server's FQDN."""
    if current is None:
        return False
    candidate = certificates.Candidate.from_certificate(current.secret_name, current.certificate)
    return (
        current.certificate.not_valid_before_utc <= now < current.renew_after
        and candidate.names(fqdn)
    )


def issue(server: str, fqdn: str, now: dt.datetime, validity: dt.timedelta) -> SelfSigned:
    """A new self-signed certificate for a server: CN and SAN its FQDN (and the server's
    name, as Exchange's names the host), valid for ``validity``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn.rstrip(".")[:64])])
    names = list(dict.fromkeys([fqdn.rstrip("."), server]))
    # Valid from a little earlier, for clocks a little behind (a minute, or a twentieth of
    # a short validity).
    start = now - min(dt.timedelta(minutes=1), validity / 20)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return SelfSigned(
        self_signed_name(server),
        certificate,
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def secret_body(
    server: str, namespace: str, owner: dict[str, Any], cert: SelfSigned, labels: dict[str, str]
) -> dict[str, Any]:
    """The Secret that holds a server's self-signed certificate, owned by the server."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": cert.secret_name,
            "namespace": namespace,
            "labels": {**labels, SELF_SIGNED_LABEL: server},
            "ownerReferences": [owner],
        },
        "data": {
            "tls.crt": base64.b64encode(cert.crt).decode(),
            "tls.key": base64.b64encode(cert.key).decode(),
        },
    }
