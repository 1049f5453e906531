"""Mutual TLS on STARTTLS: a server context that asks the client for its certificate and
takes whatever comes, so that the receiver (``identity``) judges it, not the handshake.

Why not ``CERT_OPTIONAL`` alone: OpenSSL then fails the handshake on any certificate it
cannot verify against the context's CA store. A server's self-signed certificate is no
authority, an untrusted or expired one must leave the session anonymous (never a failed
handshake the client cannot tell from a broken server), and a partner's certificate is
judged with the MAIL FROM domain in hand. So the context asks for a certificate with a
verify callback that accepts every chain (``SSL_CTX_set_verify`` through ``ctypes`` on the
context's own ``SSL_CTX``); ``peer_certificate`` then hands the DER to ``identity``.

When the callback cannot be installed (an interpreter whose ``SSLContext`` layout is not
the one checked here), the context does not ask for certificates at all and says so once in
the log: sessions are anonymous, as before, rather than failing handshakes."""

from __future__ import annotations

import ctypes
import datetime as dt
import functools
import logging
import ssl
import sys
from typing import Any

from cryptography import x509
from smtpgate.connectors import organization
from smtpgate.connectors.enums import Principal
from smtpgate.connectors.organization import Organization

from . import addresses, identity, policy, replies
from .replies import Reply

log = logging.getLogger(__name__)

_VERIFY_PEER = 0x01
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


@_CALLBACK
def _accept_any(preverify_ok: int, store: int | None) -> int:
    return 1  # the certificate is judged after the handshake, by identity


class _Libssl:
    """The libssl functions of the ``_ssl`` module this interpreter runs."""

    def __init__(self) -> None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        self.set_verify = lib.SSL_CTX_set_verify
        self.set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _CALLBACK]
        self.set_verify.restype = None
        self.get_verify_mode = lib.SSL_CTX_get_verify_mode
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_verify_mode.restype = ctypes.c_int


_LIB: _Libssl | None = None
_UNAVAILABLE: str | None = None


def _ssl_ctx(context: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` of ``context``: CPython's ``PySSLContext`` begins with it, right
    after the object header."""
    header = sys.getsizeof(object())  # PyObject_HEAD (refcount and type) in this build
    return ctypes.c_void_p.from_address(id(context) + header).value or 0


def _install(context: ssl.SSLContext) -> str | None:
    """Ask for a client certificate and accept any; the reason it could not be, or None."""
    global _LIB, _UNAVAILABLE
    if _UNAVAILABLE is not None:
        return _UNAVAILABLE
    try:
        if _LIB is None:
            _LIB = _Libssl()
        context.verify_mode = ssl.CERT_OPTIONAL  # the interpreter's own bookkeeping
        pointer = _ssl_ctx(context)
        # The layout check: the pointer must be a context whose mode is the one just set.
        if not pointer or _LIB.get_verify_mode(pointer) != _VERIFY_PEER:
            raise OSError("the SSLContext layout is not the one expected")
        _LIB.set_verify(pointer, _VERIFY_PEER, _accept_any)
    except (OSError, AttributeError, ValueError) as err:
        context.verify_mode = ssl.CERT_NONE
        _UNAVAILABLE = str(err)
        log.error(
            "client certificates cannot be asked for (%s): Direct Trust and domain "
            "security are off, sessions stay anonymous",
            err,
        )
        return _UNAVAILABLE
    return None


def server_context(cert_file: str, key_file: str, ask_client: bool) -> ssl.SSLContext:
    """A STARTTLS context serving ``cert_file``; with ``ask_client``, one that asks the
    client for its certificate and lets any through to be judged. Raises OSError or
    ssl.SSLError when the files do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if ask_client:
        _install(context)
    return context


def asks(context: ssl.SSLContext) -> bool:
    return context.verify_mode != ssl.CERT_NONE


def peer_certificate(extra: Any) -> bytes | None:
    """The DER of the certificate the client presented in the handshake, if any; ``extra``
    is the TLS transport's extra info (aiosmtpd's ``session.ssl``)."""
    ssl_object = extra.get("ssl_object") if isinstance(extra, dict) else None
    if ssl_object is None:
        return None
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except (ValueError, ssl.SSLError):
        return None
    return der or None


# -- the hooks the SMTP adapter calls ---------------------------------------------------------


def on_starttls(state: policy.Session, org: Organization, extra: Any) -> str:
    """After the handshake: the session's principals from the client's certificate (Direct
    Trust); a protocol log note on what it proved."""
    der = peer_certificate(extra)
    state.principals, peer = identity.after_starttls(
        state.connector, org, der, dt.datetime.now(dt.UTC)
    )
    state.peer_certificate = der
    state.partner_domain = None
    if der is None:
        return "no client certificate"
    if peer.server is not None and peer.refused:
        return (
            f"Direct Trust: {peer.server.name} ({peer.server.role}) may not submit on this "
            "connector; anonymous"
        )
    if peer.server is not None:
        return f"Direct Trust: {peer.server.name} ({peer.server.role}) holds " + ", ".join(
            sorted(state.principals)
        )
    return f"client certificate {organization.fingerprint(der)[:16]} is not a trusted server's"


@functools.lru_cache(maxsize=16)
def _anchors(pems: tuple[str, ...]) -> list[x509.Certificate]:
    return organization.anchors(pems)


def at_mail(state: policy.Session, org: Organization, sender: str) -> Reply | None:
    """Domain security at MAIL FROM, on a connector with domainSecureEnabled: a sender in a
    domain of the organisation's domain-secure list must come over TLS with a certificate
    that chains to a partner trust anchor and names that domain; the session then holds
    MS Exchange\\Partner Servers for this transaction. A refusal when it does not (never a
    silent anonymous downgrade), else None (policy.mail decides the rest)."""
    if state.partner_domain is not None:  # the last transaction's: not this one's
        state.principals = state.principals - {Principal.PartnerServers.value}
        state.partner_domain = None
    if not state.connector.domain_secure_enabled or state.user is not None:
        return None
    address = addresses.parse(sender) if sender not in ("", "<>") else None
    if address is None:
        return None
    domain = address.domain.lower()
    if organization.in_list(domain, org.domain_secure_domains) is None:
        return None
    if not state.tls:
        return replies.domain_secure_needs_tls(domain)
    why = organization.partner_verified(
        state.peer_certificate, _anchors(org.partner_trust_anchors), domain, dt.datetime.now(dt.UTC)
    )
    if why is not None:
        log.info("domain security for %s from %s refused: %s", domain, state.remote, why)
        return replies.domain_secure_certificate(domain)
    base = state.principals - {Principal.PartnerServers.value}
    state.principals, state.partner_domain = identity.partner(base), domain
    return None
