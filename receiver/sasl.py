"""SASL exchanges beyond PLAIN and LOGIN (GSSAPI, NTLM; AUTH and X-EXPS): the 334
challenges and response lines of RFC 4954, and the outcome the adapter gives ``policy``.

A mechanism (``sasl_gssapi``, ``sasl_ntlm``) only turns tokens into tokens; this module
reads the lines: one response per line, base64 or ``*`` to cancel, at most
``MAX_RESPONSE`` octets (RFC 4954 4 asks for 12288, which a Kerberos ticket with a Windows
PAC needs; the command limit of 512 stays for commands). Anything that is not a proper
response ends the exchange with a refusal that counts as a failed logon."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from smtpgate.connectors import kerberos
from smtpgate.connectors.config import ConnectorConfig, ServerConfig

from . import lines, policy, replies
from .replies import Reply

if TYPE_CHECKING:
    from .smtp import ConnectorSMTP

log = logging.getLogger(__name__)

MAX_RESPONSE = policy.AUTH_LINE_LIMIT  # octets of one response line (RFC 4954 4)
MECHANISMS = ("GSSAPI", "NTLM")

CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode the response as base64")
RESPONSE_TOO_LONG = Reply(500, "5.5.6", "Authentication response too long")
FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTHZID = Reply(535, "5.7.8", "Authorization identity must be empty or the authentication identity")


class Failed(Exception):
    """The exchange ended without a logon; ``reply`` is what the client is told."""

    def __init__(self, reply: Reply = FAILED, detail: str = "") -> None:
        super().__init__(detail or reply.text)
        self.reply = reply


@dataclass(frozen=True)
class Identity:
    """Who the client proved to be: the name it is known by, and its principals."""

    user: str
    principals: frozenset[str]


class Mechanism(Protocol):
    """One exchange of one mechanism. ``step`` takes the client's token and gives the next
    challenge, or None once the client is known (``identity``); it raises ``Failed``."""

    opening: bytes  # the challenge to an AUTH without an initial response
    opening_is_text: bool  # sent as it is (NTLM's "334 NTLM supported"), not in base64

    async def step(self, token: bytes) -> bytes | None: ...

    def identity(self) -> Identity: ...


@dataclass(frozen=True)
class Outcome:
    """``identity`` on success; else the refusal (``reply``) that counts as a failed logon."""

    identity: Identity | None
    reply: Reply | None = None


def available(config: ServerConfig) -> frozenset[str]:
    """The mechanisms this server has credentials for."""
    found = set()
    if config.kerberos is not None:
        found.add("GSSAPI")
    if config.ntlm is not None:
        found.add("NTLM")
    return frozenset(found)


def session_offers(config: ServerConfig, connector: ConnectorConfig) -> dict[str, tuple[str, ...]]:
    """What a session on ``connector`` is offered beyond BasicAuth (``policy.Session``'s
    ``sasl_offered`` and ``exps_offered``)."""
    found = available(config)
    return {
        "sasl_offered": tuple(kerberos.sasl_mechanisms(connector.auth_mechanisms, found)),
        "exps_offered": tuple(kerberos.exps_mechanisms(connector.auth_mechanisms, found)),
    }


def exchange(
    config: ServerConfig, connector: ConnectorConfig, mechanism: str, servers_only: bool = False
) -> Mechanism:
    """A new exchange of ``mechanism`` (one the session was offered)."""
    if mechanism == "GSSAPI":
        from . import sasl_gssapi

        assert config.kerberos is not None
        return sasl_gssapi.GssapiExchange(
            config.kerberos, connector.auth_mechanisms, servers_only=servers_only
        )
    from . import sasl_ntlm

    assert config.ntlm is not None
    return sasl_ntlm.NtlmExchange(config.ntlm)


async def authenticate(
    smtp: ConnectorSMTP,
    state: policy.Session,
    mechanism: str,
    initial: str | None,
    servers_only: bool = False,
) -> tuple[Identity | None, Reply | None]:
    """Run an AUTH (or X-EXPS) exchange of ``mechanism``: who the client proved to be, or
    the refusal to give when it proved nobody (None: the usual 535)."""
    outcome = await run(
        smtp, exchange(smtp.config, state.connector, mechanism, servers_only), initial
    )
    return outcome.identity, outcome.reply


def decode(text: str | bytes) -> bytes:
    """A response's base64; ``Failed`` when it is not (RFC 4954: the server rejects it)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Failed(BAD_BASE64) from None


async def respond(smtp: ConnectorSMTP, challenge: bytes, as_text: bool = False) -> bytes:
    """Send ``334 challenge`` and read the response line: its decoded token."""
    await smtp.push("334 " + (challenge.decode("ascii") if as_text else _b64(challenge)))
    reader = smtp._reader
    try:
        line = await reader.readline()
    except lines.RefusedLine:
        raise Failed(RESPONSE_TOO_LONG) from None
    if not line.endswith(b"\n"):
        raise Failed(CANCELLED, "the client left during the exchange")
    if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
        raise Failed(BAD_BASE64)
    text = line[:-2].strip(b" ")
    if text == b"*":
        raise Failed(CANCELLED)
    return decode(text)


async def run(smtp: ConnectorSMTP, mechanism: Mechanism, initial: str | None) -> Outcome:
    """One whole exchange: the initial response (``=`` for an empty one) or the opening
    challenge, then challenges until the mechanism knows the client or refuses it."""
    reader = smtp._reader
    limit = reader._limit  # type: ignore[attr-defined]
    reader._limit = max(limit, MAX_RESPONSE + 2)  # type: ignore[attr-defined]  # one response
    try:
        if initial is None:
            token = await respond(smtp, mechanism.opening, mechanism.opening_is_text)
        elif initial == "=":
            token = b""
        else:
            token = decode(initial)
        while True:
            challenge = await mechanism.step(token)
            if challenge is None:
                return Outcome(mechanism.identity())
            token = await respond(smtp, challenge)
    except Failed as failed:
        log.info("%s exchange failed: %s", type(mechanism).__name__, failed)
        return Outcome(None, failed.reply)
    finally:
        reader._limit = limit  # type: ignore[attr-defined]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def exps_command(smtp: ConnectorSMTP, arg: str | None) -> None:
    """X-EXPS <mechanism> [initial-response]: Exchange server authentication, the exchange
    of AUTH with only the organisation's servers able to pass; answered as AUTH is."""
    if await smtp.check_helo_needed("EHLO"):
        return
    state = smtp.policy
    assert state is not None and smtp.session is not None
    if not smtp.session.extended_smtp:
        await smtp.push('500 5.5.1 Error: command "X-EXPS" not recognized')
        return
    if smtp.envelope is not None and smtp.envelope.mail_from is not None:
        await smtp.push(replies.AUTH_IN_TRANSACTION.line())
        return
    refusal = policy.exps_start(state, arg)
    if refusal is not None:
        await smtp.push(smtp.reply(refusal))
        return
    words = (arg or "").split()
    initial = words[1] if len(words) > 1 else None
    found, failure = await authenticate(smtp, state, words[0].upper(), initial, servers_only=True)
    await smtp.push(smtp.event_handler.logon(smtp.session, found, failure))
