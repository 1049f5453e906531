"""Which certificate each connector of a server presents on STARTTLS: one chosen by issuer
and subject among the namespace's TLS Secrets, or the server's own self-signed one; and the
``CertificateReady`` condition that says which and why. Pure."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from smtpgate.connectors import certificates, config, specs, usage
from smtpgate.connectors.enums import AuthMechanism
from smtpgate.connectors.errors import SpecError

from . import certs, resources

Body = dict[str, Any]
Named = list[tuple[str, specs.ReceiveConnectorSpec]]


@dataclass(frozen=True)
class Verdict:
    """A connector's ``CertificateReady``: (ok, reason, message)."""

    ok: bool
    reason: str
    message: str


@dataclass
class Chosen:
    """The certificates of one server's connectors, by connector name."""

    tls: dict[str, config.TlsFiles] = field(default_factory=dict)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    secrets: dict[str, Body] = field(default_factory=dict)  # status.certificate

    def take(self, name: str, secret: str, not_after: dt.datetime, verdict: Verdict) -> None:
        crt, key = resources.tls_paths(secret)
        self.tls[name] = config.TlsFiles(
            cert_file=crt, key_file=key, source=secret, not_after=not_after.isoformat()
        )
        self.verdicts[name] = verdict
        self.secrets[name] = {
            "secretName": secret,
            "notAfter": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def choose(
    server_spec: specs.TransportServerSpec,
    implicit: Named,
    mine: Named,
    pool: list[certificates.Candidate],
    own: certs.SelfSigned,
    now: dt.datetime,
) -> Chosen:
    """The certificate of every connector offering TLS or ExchangeServer. The implicit
    Mailbox delivery connector (only the organisation's servers speak to it), and one that
    names no certificate and finds none for its FQDN, present the server's self-signed
    one; one that names a certificate the pool lacks offers no STARTTLS."""
    out = Chosen()
    implicit_names = {name for name, _ in implicit}
    for connector_name, connector_spec in [*implicit, *mine]:
        try:
            resolved = usage.resolve(connector_spec, server_spec.role)
        except SpecError:
            continue  # the compiler rejects it and says why
        if not {AuthMechanism.TLS, AuthMechanism.ExchangeServer} & set(resolved.auth_mechanisms):
            continue
        fqdn = (connector_spec.fqdn or server_spec.fqdn).rstrip(".")
        choice = certificates.choose(resolved.certificate_name, fqdn, pool, now)
        if connector_name in implicit_names or (
            choice.chosen is None and resolved.certificate_name is None
        ):
            verdict = Verdict(
                True,
                "SelfSigned",
                f"the server's self-signed certificate {own.secret_name} (expires "
                f"{own.not_after.isoformat()}); {choice.message}",
            )
            out.take(connector_name, own.secret_name, own.not_after, verdict)
        elif choice.chosen is None:
            out.verdicts[connector_name] = Verdict(
                False, str(choice.reason), choice.message + "; STARTTLS is not offered"
            )
        else:
            verdict = Verdict(True, "Selected", choice.message)
            out.take(connector_name, choice.chosen.source, choice.chosen.not_after, verdict)
    return out


def next_boundary(pool: list[certificates.Candidate], now: dt.datetime) -> float | None:
    """Seconds until some certificate becomes valid or expires (then choose again)."""
    times = [t for c in pool for t in (c.not_before, c.not_after) if t > now]
    return (min(times) - now).total_seconds() + 1 if times else None
