"""HELO, EHLO, MAIL and RCPT (``receiver.commands``) answer as aiosmtpd's own
``smtp_HELO``, ``smtp_EHLO``, ``smtp_MAIL`` and ``smtp_RCPT`` do with the receiver's hooks: every session below is run
against both, and the replies must be the same, line for line. An aiosmtpd upgrade that
changes its answers fails here."""

from __future__ import annotations

from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from smtpgate.receiver import commands, engine
from smtpgate.receiver.smtp import ConnectorSMTP

from .helpers import LOOP, transcript

CONNECTORS = {
    "dsn": LOOP,
    "small-no-dsn": {**LOOP, "maxMessageSize": 2000, "deliveryStatusNotificationEnabled": False},
}

OK = b"MAIL FROM:<a@example.org>"
SCRIPTS = [
    [b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@contoso.com>", b"EHLO", b"EHLO client.example"],
    [b"HELO client.example", OK + b" SIZE=10", OK, b"RCPT TO:<b@contoso.com> NOTIFY=NEVER"],
    [b"HELO client.example", b"RCPT TO:<b@contoso.com>", OK, b"RCPT TO:<b@contoso.com>"],
    [b"EHLO c", b"MAIL", b"MAIL FROM", b"MAIL FROM:", b"MAIL TO:<a@example.org>", b"MAIL FROM:<>"],
    [b"EHLO c", b"mail from:<a@example.org>", b"MAIL FROM:<b@example.org>", b"RSET", b"NOOP"],
    [b"EHLO c", b"MAIL FROM:a@example.org", b"RSET", b"MAIL FROM:<a@>", b"MAIL FROM:<@>"],
    [b"EHLO c", OK + b" SIZE=abc", OK + b" SIZE", OK + b" SIZE=99999999", OK + b" SIZE=1000"],
    [b"EHLO c", OK + b" BODY=BINARYMIME", OK + b" BODY", OK + b" body=8bitmime", b"RSET"],
    [b"EHLO c", OK + b" BODY=7BIT SIZE=5", b"RSET", OK + b" SMTPUTF8", OK + b" SMTPUTF8=X"],
    [b"EHLO c", OK + b" X=Y", OK + b" =Y", OK + b" X=", OK + b" RET=HDRS ENVID=x+2B1"],
    [b"EHLO c", b"RCPT TO:<b@contoso.com>", OK, b"RCPT", b"RCPT TO", b"RCPT TO:", b"RCPT FROM:<x>"],
    [b"EHLO c", OK, b"rcpt to:<b@contoso.com>", b"RCPT TO:<postmaster>", b"RCPT TO:<b@>"],
    [b"EHLO c", OK, b"RCPT TO:<b@contoso.com> X=Y", b"RCPT TO:<b@contoso.com> NOTIFY=NEVER"],
    [
        b"EHLO c",
        OK,
        b"RCPT TO:<b@contoso.com> ORCPT=rfc822;b@contoso.com",
        b"RCPT TO:b@contoso.com",
    ],
    [b"EHLO c", OK, b"RCPT TO:<nobody@elsewhere.example>", b'RCPT TO:<"q x"@contoso.com>'],
    [b"EHLO c", b"EHLO d", b"HELO e", b"EHLO f", b"MAIL FROM:<a@example.org>", b"EHLO g", OK],
    [b"HELO", b"HELO c", OK, b"HELO d", b"MAIL FROM:<a@example.org> SIZE=10", b"HELO  "],
]


async def _stock_rcpt(self: ConnectorSMTP, arg: str | None) -> None:
    self._arg = arg  # as the receiver's hooks read it
    await SMTP.smtp_RCPT(self, arg)


def test_the_commands_are_the_receivers_own() -> None:
    assert ConnectorSMTP.smtp_HELO is commands.helo
    assert ConnectorSMTP.smtp_EHLO is commands.ehlo
    assert ConnectorSMTP.smtp_MAIL is commands.mail
    assert ConnectorSMTP.smtp_RCPT is commands.rcpt
    table = engine.commands(ConnectorSMTP)
    assert (table["EHLO"], table["MAIL"], table["RCPT"]) == (
        commands.ehlo,
        commands.mail,
        commands.rcpt,
    )
    assert table["HELO"] is commands.helo
    pairs = (
        (commands.helo, "smtp_HELO"),
        (commands.ehlo, "smtp_EHLO"),
        (commands.mail, "smtp_MAIL"),
        (commands.rcpt, "smtp_RCPT"),
    )
    for ours, theirs in pairs:  # what HELP shows
        for name in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
            assert getattr(ours, name) == getattr(getattr(SMTP, theirs), name)


@pytest.mark.parametrize("connector", sorted(CONNECTORS))
@pytest.mark.parametrize("script", SCRIPTS, ids=[str(i) for i in range(len(SCRIPTS))])
def test_helo_ehlo_mail_and_rcpt_answer_as_aiosmtpds_own(
    start: Any, monkeypatch: pytest.MonkeyPatch, script: list[bytes], connector: str
) -> None:
    connectors = [("Loop", CONNECTORS[connector])]
    ours = transcript(start(connectors).port(25), script)

    monkeypatch.setattr(engine, "_COMMANDS", {})  # the command table is made once per class
    monkeypatch.setattr(ConnectorSMTP, "smtp_HELO", SMTP.smtp_HELO)
    monkeypatch.setattr(ConnectorSMTP, "smtp_EHLO", SMTP.smtp_EHLO)
    monkeypatch.setattr(ConnectorSMTP, "smtp_MAIL", commands.counted(SMTP.smtp_MAIL))
    monkeypatch.setattr(ConnectorSMTP, "smtp_RCPT", _stock_rcpt)
    theirs = transcript(start(connectors).port(25), script)
    assert ours == theirs
    assert len(ours) == len(script) + 1
