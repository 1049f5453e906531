"""Every documented permission, shown present and absent on a running receiver."""

from __future__ import annotations

from typing import Any

import pytest
from smtpgate.receiver import replies

from .conftest import PASSWORDS, Running
from .helpers import Raw

ANON = "NT AUTHORITY\\ANONYMOUS LOGON"
USERS = "NT AUTHORITY\\Authenticated Users"


def _connector(*entries: tuple[str, str, str], **extra: Any) -> list[tuple[str, dict[str, Any]]]:
    data: dict[str, Any] = {
        "usage": "Custom",
        "bindings": ["0.0.0.0:25"],
        "remoteIPRanges": ["127.0.0.0/8"],
        "authMechanisms": ["TLS", "BasicAuth"],
        "permissionGroups": ["AnonymousUsers", "ExchangeUsers"],
        "tarpitIntervalSeconds": 0,
        "permissions": [
            {"principal": p, "extendedRights": [right], "access": access}
            for p, right, access in entries
        ],
    }
    data.update(extra)
    return [("Custom", data)]


def _line(reply: replies.Reply) -> tuple[int, str]:
    return reply.code, reply.line()[4:]


def _session(running: Running, user: str | None = None) -> Raw:
    raw = Raw(running.port(25))
    raw.reply()
    raw.command("EHLO client.example")
    if user:
        from .helpers import plain

        assert raw.command(f"AUTH PLAIN {plain(user, PASSWORDS[user])}")[0] == 235
    return raw


@pytest.mark.parametrize("present", [True, False])
def test_submit_permission_gates_mail_from(start: Any, present: bool) -> None:
    entries = [] if present else [(ANON, "ms-Exch-SMTP-Submit", "Remove")]
    raw = _session(start(_connector(*entries)))
    reply = raw.command("MAIL FROM:<sender@example.org>")
    assert reply == (_line(replies.SENDER_OK) if present else _line(replies.NOT_AUTHENTICATED))


@pytest.mark.parametrize("present", [True, False])
def test_submit_permission_gates_auth(start: Any, present: bool) -> None:
    entries = [] if present else [(USERS, "ms-Exch-SMTP-Submit", "Deny")]
    raw = _session(start(_connector(*entries)))
    from .helpers import plain

    reply = raw.command(f"AUTH PLAIN {plain('alice', PASSWORDS['alice'])}")
    assert reply == (_line(replies.AUTH_OK) if present else _line(replies.AUTH_NOT_PERMITTED))


@pytest.mark.parametrize("present", [True, False])
def test_accept_any_recipient_lets_anonymous_relay(start: Any, present: bool) -> None:
    entries = [(ANON, "ms-Exch-SMTP-Accept-Any-Recipient", "Allow")] if present else []
    raw = _session(start(_connector(*entries)))
    raw.command("MAIL FROM:<sender@example.org>")
    reply = raw.command("RCPT TO:<someone@foreign.example>")
    assert reply == (_line(replies.RECIPIENT_OK) if present else _line(replies.RELAY_DENIED))


@pytest.mark.parametrize("present", [True, False])
def test_accept_any_sender_bypasses_the_spoofing_check(start: Any, present: bool) -> None:
    entries = [] if present else [(ANON, "ms-Exch-SMTP-Accept-Any-Sender", "Remove")]
    raw = _session(start(_connector(*entries)))
    reply = raw.command("MAIL FROM:<sender@example.org>")
    assert reply == (_line(replies.SENDER_OK) if present else _line(replies.SEND_AS_DENIED))
    raw.command("RSET")
    # Senders in an accepted (non-authoritative) domain pass either way.
    assert raw.command("MAIL FROM:<x@sub.fabrikam.com>") == _line(replies.SENDER_OK)


@pytest.mark.parametrize("present", [True, False])
def test_accept_authoritative_domain_sender(start: Any, present: bool) -> None:
    entries = (
        [] if present else [(ANON, "ms-Exch-SMTP-Accept-Authoritative-Domain-Sender", "Remove")]
    )
    raw = _session(start(_connector(*entries)))
    reply = raw.command("MAIL FROM:<ceo@Contoso.COM>")
    assert reply == (_line(replies.SENDER_OK) if present else _line(replies.SEND_AS_DENIED))


HEADERS = (
    b"Received: from old.example by relay.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"RECEIVED: from shouting.example\r\n"
    b"Resent-From: someone@example.org\r\n"
    b"X-MS-Exchange-Organization-SCL: -1\r\n"
    b"x-ms-exchange-organization-AuthAs:\r\n Internal\r\n"
    b"X-MS-Exchange-Forest-RulesExecuted: yes\r\n"
    b'X-Smtpgate-Submission: connector="forged"; authenticated=yes; anti-spam=bypass\r\n'
    b"Subject: firewall\r\n"
    b"\r\n"
    b"body\r\n"
)


def _deliver(running: Running, content: bytes, user: str | None = None) -> bytes:
    raw = _session(running, user)
    sender = f"{user}@contoso.com" if user else "sender@example.org"
    assert raw.command(f"MAIL FROM:<{sender}>")[0] == 250
    assert raw.command("RCPT TO:<user@contoso.com>")[0] == 250
    assert raw.command("DATA")[0] == 354
    raw.send(content + b".\r\n")
    code, text = raw.reply()
    assert code == 250, text
    raw.command("QUIT")
    return running.messages()[-1]


def _incoming_headers(message: bytes) -> bytes:
    """The message's header section without the trace fields smtpgate added."""
    head = message.split(b"\r\n\r\n", 1)[0]
    return head.split(b"X-Smtpgate-Submission:", 1)[1]


@pytest.mark.parametrize(
    ("right", "removed"),
    [
        ("ms-Exch-Accept-Headers-Routing", [b"Received: from old", b"RECEIVED:", b"Resent-From:"]),
        (
            "ms-Exch-Accept-Headers-Organization",
            [b"X-MS-Exchange-Organization-SCL", b"x-ms-exchange-organization-AuthAs", b" Internal"],
        ),
        ("ms-Exch-Accept-Headers-Forest", [b"X-MS-Exchange-Forest-RulesExecuted"]),
    ],
)
@pytest.mark.parametrize("present", [True, False])
def test_header_firewall(start: Any, right: str, removed: list[bytes], present: bool) -> None:
    # Anonymous holds only the routing right; grant or remove per case.
    entries = [(ANON, right, "Allow" if present else "Remove")]
    message = _deliver(start(_connector(*entries)), HEADERS)
    incoming = _incoming_headers(message)
    for fragment in removed:
        assert (fragment in incoming) is present, fragment
    assert b"Subject: firewall" in incoming
    assert b"forged" not in message


def test_bypass_message_size_limit_at_mail_and_at_end_of_data(start: Any) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n"
    big = big * 60  # about 5 KB
    without = start(_connector(maxMessageSize=2000))
    raw = _session(without)
    assert raw.command("MAIL FROM:<s@example.org> SIZE=5000")[0] == 552
    raw.command("RSET")
    raw.command("MAIL FROM:<s@example.org>")
    raw.command("RCPT TO:<user@contoso.com>")
    raw.command("DATA")
    raw.send(big + b".\r\n")
    assert raw.reply()[0] == 552
    assert without.messages() == []

    bypass = start(
        _connector((ANON, "ms-Exch-Bypass-Message-Size-Limit", "Allow"), maxMessageSize=2000)
    )
    raw = _session(bypass)
    assert raw.command("MAIL FROM:<s@example.org> SIZE=5000")[0] == 250
    raw.command("RCPT TO:<user@contoso.com>")
    raw.command("DATA")
    raw.send(big + b".\r\n")
    assert raw.reply()[0] == 250
    assert len(bypass.messages()) == 1


@pytest.mark.parametrize("present", [True, False])
def test_bypass_anti_spam_is_recorded(start: Any, present: bool) -> None:
    entries = [(ANON, "ms-Exch-Bypass-Anti-Spam", "Allow")] if present else []
    message = _deliver(start(_connector(*entries)), b"Subject: s\r\n\r\nb\r\n")
    assert (b"anti-spam=bypass" in message) is present
    assert (b"anti-spam=apply" in message) is not present


@pytest.mark.parametrize("present", [True, False])
def test_accept_authentication_flag_is_recorded(start: Any, present: bool) -> None:
    entries = [(ANON, "ms-Exch-SMTP-Accept-Authentication-Flag", "Allow")] if present else []
    message = _deliver(start(_connector(*entries)), b"Subject: s\r\n\r\nb\r\n")
    assert (b"authenticated=yes" in message) is present


def test_authenticated_user_message_is_marked_authenticated(start: Any) -> None:
    message = _deliver(start(_connector()), b"Subject: s\r\n\r\nb\r\n", user="alice")
    assert b'principal="alice"' in message and b"authenticated=yes" in message
    assert b"with ESMTPA id" in message


@pytest.mark.parametrize("present", [True, False])
def test_xexch50_needs_accept_exch50(start: Any, present: bool) -> None:
    entries = [(ANON, "ms-Exch-SMTP-Accept-Exch50", "Allow")] if present else []
    raw = Raw(start(_connector(*entries)).port(25))
    raw.reply()
    _, ehlo = raw.command("EHLO client.example")
    assert ("XEXCH50" in ehlo.splitlines()) is present
    raw.command("MAIL FROM:<s@example.org>")
    reply = raw.command("XEXCH50 4 2")
    if present:
        assert reply[0] == 354
        raw.send(b"\x01\x02\x03\x04")
        assert raw.reply() == _line(replies.EXCH50_OK)
    else:
        assert reply == _line(replies.EXCH50_NOT_PERMITTED)


def test_granular_deny_wins_for_one_user(start: Any) -> None:
    running = start(_connector(("bob", "ms-Exch-SMTP-Accept-Any-Recipient", "Deny")))
    for user, expected in (("alice", replies.RECIPIENT_OK), ("bob", replies.RELAY_DENIED)):
        raw = _session(running, user)
        assert raw.command(f"MAIL FROM:<{user}@contoso.com>")[0] == 250
        assert raw.command("RCPT TO:<friend@foreign.example>") == _line(expected)
        raw.close()


RELAY_BATTERY = [
    "user%foreign.example@contoso.com",
    "foreign.example!user@contoso.com",
    "@contoso.com:user@foreign.example",
    "@contoso.com,@relay.example:user@foreign.example",
    '"user@foreign.example"@contoso.com',
    '"user%foreign.example"@contoso.com',
    "user@[192.0.2.1]",
    "user@[IPv6:2001:db8::1]",
    "USER@FOREIGN.EXAMPLE",
    "user@contoso.com.foreign.example",
    "user@foreign.example",
    "user@foreign.example.",
    "user@contoso.com@foreign.example",
]


@pytest.mark.parametrize("address", RELAY_BATTERY)
def test_relay_battery_refused_for_anonymous(start: Any, address: str) -> None:
    running = start(_connector())
    raw = _session(running)
    raw.command("MAIL FROM:<sender@example.org>")
    code, _ = raw.command(f"RCPT TO:<{address}>")
    assert 500 <= code < 600
    raw.command("DATA")
    raw.send(b"Subject: relay\r\n\r\nx\r\n.\r\n")
    raw.reply()
    assert running.messages() == []


@pytest.mark.parametrize(
    "address",
    [
        a
        for a in RELAY_BATTERY
        if not a.endswith(".") and a.count("@") < 3 and not a.startswith("user@contoso.com@")
    ],
)
def test_relay_battery_accepted_for_relay_permitted_principal(start: Any, address: str) -> None:
    running = start(
        [
            (
                "Relay",
                {
                    **_connector()[0][1],
                    "remoteIPRanges": ["127.0.0.75"],
                    "permissions": [
                        {"principal": ANON, "extendedRights": ["ms-Exch-SMTP-Accept-Any-Recipient"]}
                    ],
                },
            ),
            ("Internet", {**_connector()[0][1]}),
        ]
    )
    raw = Raw(running.port(25), source="127.0.0.75")
    raw.reply()
    raw.command("EHLO relay-host.example")
    raw.command("MAIL FROM:<app@contoso.com>")
    assert raw.command(f"RCPT TO:<{address}>")[0] == 250


@pytest.mark.parametrize(
    "address", ["User@Contoso.COM", "user@sub.fabrikam.com", "user@contoso.com"]
)
def test_accepted_domains_take_any_case_and_wildcards(start: Any, address: str) -> None:
    raw = _session(start(_connector()))
    raw.command("MAIL FROM:<sender@example.org>")
    assert raw.command(f"RCPT TO:<{address}>") == _line(replies.RECIPIENT_OK)
