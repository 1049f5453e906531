"""HELO, EHLO, MAIL and RCPT as aiosmtpd answers them, without layers our settings leave
idle.

For the receiver's settings these give the replies of aiosmtpd's ``smtp_HELO``,
``smtp_EHLO``, ``smtp_MAIL`` and ``smtp_RCPT``. Those await a coroutine to ask whether
HELO is needed and another whether AUTH is (never required here), find the handler's hook
by name on every call, log each sender and recipient at INFO (a level the receiver never
enables for ``mail.log``), and build an EHLO keyword list that
``hooks.Handler.handle_EHLO`` replaces whole. These make the same checks in the same
order; the hooks decide as before. ``tests/receiver/test_commands.py`` holds them to
aiosmtpd's own answers."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import Envelope, syntax

if TYPE_CHECKING:
    from .smtp import ConnectorSMTP


@syntax("EHLO hostname")
async def ehlo(smtp: ConnectorSMTP, hostname: str | None) -> None:
    session = _greeting(smtp, hostname, extended=True)
    if session is None:
        await smtp.push("501 Syntax: EHLO hostname")
        return
    handler = smtp.event_handler
    for reply in await handler.handle_EHLO(smtp, session, smtp.envelope, hostname, []):
        await smtp.push(reply)


@syntax("HELO hostname")
async def helo(smtp: ConnectorSMTP, hostname: str | None) -> None:
    session = _greeting(smtp, hostname, extended=False)
    if session is None:
        await smtp.push("501 Syntax: HELO hostname")
        return
    handler = smtp.event_handler
    await smtp.push(await handler.handle_HELO(smtp, session, smtp.envelope, hostname))


def _greeting(smtp: ConnectorSMTP, hostname: str | None, extended: bool) -> Any:
    """What aiosmtpd's HELO and EHLO do before their hook: the session, with a new
    envelope (``_set_rset_state``) and whether it is extended SMTP; None without a
    hostname (the caller's syntax reply)."""
    if not hostname:
        return None
    smtp.envelope = Envelope()
    session = smtp.session
    assert session is not None
    session.extended_smtp = extended
    return session


def counted(command: Any) -> Any:
    """``command`` (an ``smtp_*`` method) counted as a junk command (``ConnectorSMTP.junk``;
    the count starts again when a message is accepted)."""

    @functools.wraps(command)
    async def junk(smtp: ConnectorSMTP, arg: str | None) -> None:
        smtp._arg = arg  # the command's argument as sent (for its parameters' case)
        refusal = smtp.junk()
        if refusal is not None:
            await smtp.push(refusal.line())
            return
        await command(smtp, arg)

    return junk


@syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
async def mail(smtp: ConnectorSMTP, arg: str | None) -> None:
    # Counted as a junk command as ``counted`` counts one (a message accepted clears it).
    smtp._arg = arg
    refusal = smtp.junk()
    if refusal is not None:
        await smtp.push(refusal.line())
        return
    session, envelope = smtp.session, smtp.envelope
    assert session is not None and envelope is not None
    if not session.host_name:
        await smtp.push("503 Error: send HELO first")
        return
    found = _path(smtp, "FROM:", arg)
    if isinstance(found, str):
        await smtp.push(found or _syntax_error("MAIL FROM:", session.extended_smtp))
        return
    address, addrparams = found
    if envelope.mail_from:
        await smtp.push("503 Error: nested MAIL command")
        return
    mail_options = addrparams.upper().split()
    if mail_options:
        error = _mail_parameters(smtp, mail_options)
        if error is not None:
            await smtp.push(error or _syntax_error("MAIL FROM:", session.extended_smtp))
            return
    envelope.smtp_utf8 = False
    handler = smtp.event_handler
    await smtp.push(await handler.handle_MAIL(smtp, session, envelope, address, mail_options))


def _mail_parameters(smtp: ConnectorSMTP, mail_options: list[str]) -> str | None:
    """The reply that refuses MAIL's parameters ("" for the syntax error), or None."""
    params = smtp._getparams(mail_options)
    if params is None:
        return ""
    if params.pop("BODY", "7BIT") not in ("7BIT", "8BITMIME"):
        return "501 Error: BODY can only be one of 7BIT, 8BITMIME"
    smtputf8 = params.pop("SMTPUTF8", False)
    if not isinstance(smtputf8, bool):
        return "501 Error: SMTPUTF8 takes no arguments"
    if smtputf8:  # never enabled here
        return "501 Error: SMTPUTF8 disabled"
    size = params.pop("SIZE", None)
    if size:
        if isinstance(size, bool) or not size.isdigit():
            return ""
        if smtp.data_size_limit and int(size) > smtp.data_size_limit:
            return "552 Error: message size exceeds fixed maximum message size"
    if params:
        return "555 MAIL FROM parameters not recognized or not implemented"
    return None


@syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
async def rcpt(smtp: ConnectorSMTP, arg: str | None) -> None:
    smtp._arg = arg
    session, envelope = smtp.session, smtp.envelope
    assert session is not None and envelope is not None
    if not session.host_name:
        await smtp.push("503 Error: send HELO first")
        return
    if not envelope.mail_from:
        await smtp.push("503 Error: need MAIL command")
        return
    found = _path(smtp, "TO:", arg)
    if isinstance(found, str):
        await smtp.push(found or _syntax_error("RCPT TO:", session.extended_smtp))
        return
    address, addrparams = found
    rcpt_options = addrparams.upper().split()
    if rcpt_options:
        params = smtp._getparams(rcpt_options)
        if params is None:
            await smtp.push(_syntax_error("RCPT TO:", session.extended_smtp))
            return
        if params:
            await smtp.push("555 RCPT TO parameters not recognized or not implemented")
            return
    handler = smtp.event_handler
    await smtp.push(await handler.handle_RCPT(smtp, session, envelope, address, rcpt_options))


def _syntax_error(command: str, extended: bool) -> str:
    text = f"501 Syntax: {command} <address>"
    return text + " [SP <mail-parameters>]" if extended else text


def _path(smtp: ConnectorSMTP, keyword: str, arg: str | None) -> tuple[str, str] | str:
    """The address after ``FROM:`` or ``TO:`` (any case) and its parameters, or the reply
    that refuses them ("" for the command's syntax error)."""
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return ""
    address, params = smtp._getaddr(arg[len(keyword) :].strip())
    if address is None:
        return "553 5.1.3 Error: malformed address"
    assert smtp.session is not None
    if not address or (not smtp.session.extended_smtp and params):
        return ""
    assert params is not None
    return address, params
