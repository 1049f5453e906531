"""aiosmtpd's hooks for one connection (``handle_EHLO``, ``handle_MAIL``, ...), each a call
into ``policy``, and the AUTH exchanges the engine leaves to its handler: PLAIN and LOGIN
against the user database, GSSAPI and NTLM through ``sasl``."""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from typing import TYPE_CHECKING

from aiosmtpd.smtp import MISSING, SMTP, Envelope
from aiosmtpd.smtp import Session as EngineSession

from . import delivery, health, identity, mutual_tls, policy, replies, sasl
from .replies import Reply

if TYPE_CHECKING:
    from .smtp import ConnectorSMTP

log = logging.getLogger(__name__)


def _as_sent(arg: str | None, options: list[str]) -> list[str]:
    """MAIL or RCPT parameters as the client wrote them: the engine upper-cases them, but
    DSN's ENVID and ORCPT carry case-sensitive text to pass on."""
    tokens = (arg or "").split()[-len(options) :] if options else []
    return tokens if [t.upper() for t in tokens] == options else options


def _owns_nothing(address: str) -> bool:
    return False


class Handler:
    """aiosmtpd's hooks for one connection, each a call into ``policy``."""

    def __init__(self, smtp: ConnectorSMTP) -> None:
        self.smtp = smtp

    def state(self) -> policy.Session:
        assert self.smtp.policy is not None
        return self.smtp.policy

    def handle_STARTTLS(self, server: SMTP, session: EngineSession, envelope: Envelope) -> bool:
        # RFC 3207: forget everything from before the handshake.
        state = self.state()
        state.tls = True
        state.user = None
        state.helo = None
        note = mutual_tls.on_starttls(state, self.smtp.config.organization, session.ssl)
        self.smtp.data_size_limit = policy.message_size_limit(state)
        self.smtp.plog("*", "", f"TLS negotiation succeeded; session state reset; {note}")
        return True

    async def handle_EHLO(
        self,
        server: SMTP,
        session: EngineSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        state = self.state()
        if state.helo is not None and (refusal := self.smtp.junk()) is not None:
            return [refusal.line()]
        session.host_name = hostname
        state.helo = hostname
        self.smtp._reader.allow(policy.line_allowances(state))  # type: ignore[attr-defined]
        keywords = policy.ehlo_keywords(state, self.smtp.delivery.withheld())
        self.smtp._dsn = "DSN" in keywords  # DSN's parameters are taken only when offered
        answer = [state.connector.fqdn, *keywords]
        # One write for the whole reply: a line per keyword would cost a send() each.
        return ["\r\n".join([f"250-{line}" for line in answer[:-1]] + [f"250 {answer[-1]}"])]

    async def handle_HELO(
        self, server: SMTP, session: EngineSession, envelope: Envelope, hostname: str
    ) -> str:
        state = self.state()
        if state.helo is not None and (refusal := self.smtp.junk()) is not None:
            return refusal.line()
        session.host_name = hostname
        state.helo = hostname
        self.smtp._reader.allow({})  # type: ignore[attr-defined]
        return f"250 {state.connector.fqdn}"

    async def handle_AUTH(
        self, server: SMTP, session: EngineSession, envelope: Envelope, args: list[str]
    ) -> str | None:
        state = self.state()
        mechanism = args[0].upper()
        refusal = policy.auth_start(state, mechanism)
        if refusal is not None:
            return self.smtp.reply(refusal)
        initial = args[1] if len(args) > 1 else None
        if mechanism in sasl.MECHANISMS:
            found, failure = await sasl.authenticate(self.smtp, state, mechanism, initial)
            return self.logon(session, found, failure)
        credentials = await self._credentials(mechanism, initial)
        if credentials is None:
            return None  # the exchange already answered
        name, password = credentials
        users = self.smtp.runtime.users
        valid = await users.verify(name, password) if users is not None else False
        return self.logon(
            session, sasl.Identity(name, identity.authenticated_user(name)) if valid else None
        )

    def logon(
        self, session: EngineSession, found: sasl.Identity | None, failure: Reply | None = None
    ) -> str:
        """The reply to an AUTH (or X-EXPS) that proved ``found`` (None: a failed logon,
        ``failure`` saying how, when not with wrong credentials)."""
        state = self.state()
        principals = found.principals if found is not None else None
        answer = policy.auth_result(state, principals, failure)
        if found is None or principals is None:
            state.logon_failures += 1
        elif not answer.refusal:
            state.user = found.user
            state.principals = principals
            session.authenticated = True
            self.smtp.data_size_limit = policy.message_size_limit(state)
        return self.smtp.reply(answer)

    async def auth_GSSAPI(self, server: SMTP, args: list[str]) -> None:
        """Never called (``handle_AUTH`` answers every mechanism): the engine refuses a
        mechanism it has no ``auth_`` method for before asking the hook."""

    auth_NTLM = auth_GSSAPI

    async def _credentials(self, mechanism: str, initial: str | None) -> tuple[str, bytes] | None:
        smtp = self.smtp

        def decode(text: str) -> bytes | None:
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                return None

        if mechanism == "PLAIN":
            blob = decode(initial) if initial is not None else await smtp.challenge_auth("")
            if blob is MISSING:
                return None
            parts = blob.split(b"\x00") if isinstance(blob, bytes) else []
            if len(parts) != 3:
                await smtp.push("501 5.5.2 Cannot decode the credentials")
                return None
            if parts[0] not in (b"", parts[1]):
                # RFC 4616: acting for another identity is not a right anyone here has.
                await smtp.push(replies.AUTH_AUTHZID.line())
                return None
            login, password = parts[1], parts[2]
        else:
            login_blob = (
                decode(initial) if initial is not None else await smtp.challenge_auth("Username:")
            )
            if login_blob is MISSING:
                return None
            if not isinstance(login_blob, bytes):
                await smtp.push("501 5.5.2 Cannot decode the credentials")
                return None
            secret = await smtp.challenge_auth("Password:")
            if not isinstance(secret, bytes):
                return None
            login, password = login_blob, secret
        try:
            return login.decode("utf-8"), password
        except UnicodeDecodeError:
            await smtp.push("501 5.5.2 Cannot decode the credentials")
            return None

    async def handle_MAIL(
        self,
        server: SMTP,
        session: EngineSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        declared = (
            next((int(o[5:]) for o in options if o.startswith("SIZE=") and o[5:].isdigit()), None)
            if options
            else None
        )
        state = self.state()
        key = policy.rate_key(state)
        answer = policy.message_rate(state, self.smtp.runtime.rates.count(key)) if key else None
        users = self.smtp.runtime.users
        owns = functools.partial(users.may_send_as, state.user) if users and state.user else None
        answer = (
            answer
            or mutual_tls.at_mail(state, self.smtp.config.organization, address)
            or policy.mail(state, address, declared, owns or _owns_nothing)
        )
        answer = answer if answer.refusal else self.smtp.delivery.admit() or answer
        if not answer.refusal:
            envelope.mail_from = address
            if options:
                envelope.mail_options.extend(_as_sent(self.smtp._arg, options))
        return self.smtp.reply(answer)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: EngineSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if "@" not in address and address.lower() == "postmaster":
            address = policy.postmaster(self.state())
        answer = policy.rcpt(self.state(), address, len(envelope.rcpt_tos))
        if not answer.refusal:
            envelope.rcpt_tos.append(address)
            # One tuple per recipient: aiosmtpd's flat list would lose whose they are.
            envelope.rcpt_options.append(tuple(_as_sent(self.smtp._arg, options)))
        return self.smtp.reply(answer)

    async def handle_DATA(self, server: SMTP, session: EngineSession, envelope: Envelope) -> str:
        state = self.state()
        taking = self.smtp.intake
        assert taking is not None
        message = taking.message()
        try:
            await taking.target.deliver(message)
        except delivery.DeliveryError as err:
            log.warning("delivery of %s failed: %s", message.queue_id, err)
            if err.code is not None and err.code >= 400:
                return f"{err.code} {replies.one_line(err.text)}"
            return self.smtp.reply(replies.DELIVERY_DEFERRED)
        key = policy.rate_key(state)
        if key is not None:
            self.smtp.runtime.rates.add(key)
        state.junk_commands = 0
        health.labelled(health.MESSAGES_ACCEPTED, state.connector.name).inc()
        health.labelled(health.BYTES_ACCEPTED, state.connector.name).inc(message.size)
        self.smtp.plog("*", message.queue_id, f"accepted for {len(message.recipients)} recipients")
        return f"250 2.6.0 <{message.queue_id}@{state.connector.fqdn}> Queued mail for delivery"
