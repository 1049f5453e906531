"""AUTH GSSAPI and X-EXPS GSSAPI (RFC 4752): Kerberos V5 through GSS-API, with the
security layer negotiated as the RFC says, on python-gssapi (MIT Kerberos).

The server accepts the client's tokens until its context is established, sends any last
token and takes the client's empty answer, then offers, in a token wrapped with the
context, the one layer it supports: none (bit 1, maximum size 0; the session is protected
by TLS or not at all). The client's wrapped answer must choose that layer; an
authorization identity it names must be the identity it proved. Every GSS call blocks
(the replay cache and keytab are files), so each runs on the ``gss`` threads, off the
event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any

import gssapi
import gssapi.exceptions
from smtpgate.connectors import kerberos
from smtpgate.connectors.enums import AuthMechanism
from smtpgate.connectors.kerberos import KerberosConfig

from . import workers
from .sasl import AUTHZID, Failed, Identity

NO_SECURITY_LAYER = 0x01
# The server's offer: the no-layer bit, and a maximum message size of 0 (RFC 4752 3.3:
# no layer, so no size).
OFFER = bytes([NO_SECURITY_LAYER, 0, 0, 0])
# RFC 4752 is the Kerberos V5 mechanism alone: the acceptor takes no SPNEGO, IAKERB (which
# would have the receiver carry an unauthenticated client's KDC traffic) or plug-in mechanism.
KERBEROS = gssapi.MechType.kerberos


@functools.cache
def _threads() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(
        max(2, workers.cpu_count()), "gss", initializer=workers.free_thread
    )


async def _off_loop(function: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_threads(), function, *args)


class GssapiExchange:
    """One RFC 4752 exchange on a connector offering ``mechanisms``. ``servers_only``: an
    X-EXPS exchange, where only the organisation's servers may authenticate."""

    opening = b""
    opening_is_text = False

    def __init__(
        self,
        config: KerberosConfig,
        mechanisms: tuple[AuthMechanism, ...],
        servers_only: bool = False,
    ) -> None:
        self.config = config
        self.mechanisms = mechanisms
        self.servers_only = servers_only
        self.context: gssapi.SecurityContext | None = None
        self.phase = "context"  # context -> ack (a last token was sent) -> layer -> done
        self.client: str | None = None
        self._identity: Identity | None = None

    def _accept(self, token: bytes) -> tuple[bytes | None, bool]:
        """One accept step: its output token, and whether the context is up. (On an error
        with an error token, python-gssapi returns the token and raises at the next use of
        the context: ``complete`` is that use, here, so the error is raised here.)"""
        if self.context is None:
            credentials = gssapi.Credentials(
                usage="accept", mechs=[KERBEROS], store={"keytab": self.config.keytab_file}
            )
            self.context = gssapi.SecurityContext(creds=credentials, usage="accept")
        output = self.context.step(token)
        return output, bool(self.context.complete)

    async def step(self, token: bytes) -> bytes | None:
        if self.phase == "context":
            if not token:
                raise Failed(detail="empty GSS-API token")
            try:
                output, complete = await _off_loop(self._accept, token)
            except (gssapi.exceptions.GSSError, ValueError) as error:
                raise Failed(detail=f"GSS-API: {error}") from None
            if not complete:
                if not output:
                    raise Failed(detail="GSS-API wants more but gave no token")
                return bytes(output)
            self._established()
            if output:
                self.phase = "ack"
                return bytes(output)
            return await self._offer()
        if self.phase == "ack":
            if token:
                raise Failed(detail="a response to the last context token must be empty")
            return await self._offer()
        if self.phase == "layer":
            await self._choose(token)
            self.phase = "done"
            return None
        raise Failed(detail="the exchange is over")

    def _established(self) -> None:
        """The context is up: whose ticket for which of our principals."""
        assert self.context is not None
        if self.context.mech != KERBEROS:
            raise Failed(detail=f"mechanism {self.context.mech}, not Kerberos V5")
        target = str(self.context.target_name)
        if target not in self.config.service_principals:
            raise Failed(detail=f"ticket for {target}, not one of this server's principals")
        client = str(self.context.initiator_name)
        found = kerberos.principals_for(self.config, self.mechanisms, client, self.servers_only)
        if found is None:
            raise Failed(detail=f"{client} holds nothing on this connector")
        self.client = client
        self._identity = Identity(found[0], found[1])

    async def _offer(self) -> bytes:
        self.phase = "layer"
        try:
            wrapped = await _off_loop(self._wrap, OFFER)
        except gssapi.exceptions.GSSError as error:
            raise Failed(detail=f"GSS-API wrap: {error}") from None
        return bytes(wrapped)

    def _wrap(self, data: bytes) -> bytes:
        assert self.context is not None
        return bytes(self.context.wrap(data, False).message)

    def _unwrap(self, data: bytes) -> bytes:
        assert self.context is not None
        return bytes(self.context.unwrap(data).message)

    async def _choose(self, token: bytes) -> None:
        """The client's choice (RFC 4752 3.1): a layer we offered, then its authorization
        identity, which must be empty or the identity it proved."""
        try:
            answer = await _off_loop(self._unwrap, token)
        except (gssapi.exceptions.GSSError, ValueError) as error:
            raise Failed(detail=f"GSS-API unwrap: {error}") from None
        if len(answer) < 4:
            raise Failed(detail="the security layer answer is shorter than 4 octets")
        if answer[0] != NO_SECURITY_LAYER:
            raise Failed(detail=f"the client chose layer {answer[0]:#x}, not the one offered")
        authzid = answer[4:]
        if authzid:
            assert self._identity is not None and self.client is not None
            try:
                wanted = authzid.decode("utf-8")
            except UnicodeDecodeError:
                raise Failed(AUTHZID) from None
            if wanted not in (self.client, self._identity.user):
                raise Failed(AUTHZID, f"{self.client} asked to act as {wanted}")

    def identity(self) -> Identity:
        assert self._identity is not None and self.phase == "done"
        return self._identity
