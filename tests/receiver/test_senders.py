"""Who an authenticated user may send as: the addresses the user database gives the user
(send-as), any address with ms-Exch-SMTP-Accept-Any-Sender, and Deny entries that bite."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from smtpgate.connectors.enums import Principal
from smtpgate.receiver import replies
from smtpgate.receiver.users import UserDatabase

from .conftest import _HASHES, PASSWORDS
from .helpers import custom_connector

USERS = f"""
# name:bcrypt-hash[:addresses the user may send as]
alice:{_HASHES["alice"].decode()}:alice@contoso.com, A.Smith@Contoso.com ,@sub.fabrikam.com
bob:{_HASHES["bob"].decode()}:bob@contoso.com,bob@sub.fabrikam.com,bob@elsewhere.example
carol@contoso.com:{_HASHES["alice"].decode()}
dave:{_HASHES["bob"].decode()}
"""
USERS_PASSWORDS = {**PASSWORDS, "carol@contoso.com": "alice-secret", "dave": "bob-secret"}
DENIED = (replies.SEND_AS_DENIED.code, replies.SEND_AS_DENIED.line()[4:].encode())


def _entry(principal: str, right: str, access: str) -> dict[str, Any]:
    return {"principal": principal, "extendedRights": [right], "access": access}


def _running(start: Any, *entries: dict[str, Any]) -> Any:
    running = start(custom_connector(permissions=list(entries)))
    running.runtime.users = UserDatabase.parse(USERS)
    return running


def _mail_from(running: Any, user: str, sender: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", running.port(25), timeout=10) as client:
        client.ehlo("client.example")
        client.login(user, USERS_PASSWORDS[user])
        code, text = client.mail(sender)
        if code == 250:
            assert client.rcpt("friend@foreign.example")[0] == 250
            assert client.data(b"Subject: s\r\n\r\nbody\r\n")[0] == 250
        return code, text


def test_the_user_database_lists_send_as_addresses() -> None:
    users = UserDatabase.parse(USERS)
    assert users.addresses["alice"] == {
        "alice@contoso.com",
        "a.smith@contoso.com",
        "@sub.fabrikam.com",
    }
    assert users.addresses["carol@contoso.com"] == {"carol@contoso.com"}
    assert "dave" not in users.addresses
    assert users.check("alice", b"alice-secret")  # the third field leaves the hash alone


@pytest.mark.parametrize(
    ("user", "sender", "allowed"),
    [
        ("alice", "alice@contoso.com", True),
        ("alice", "a.smith@contoso.com", True),  # addresses compare without case
        ("alice", "anyone@sub.fabrikam.com", True),  # @domain: the whole domain
        ("alice", "bob@contoso.com", False),  # another user's address
        ("alice", "alice@fabrikam.com", False),
        ("alice", "ceo@foreign.example", False),
        ("carol@contoso.com", "carol@contoso.com", True),  # a name that is an address
        ("carol@contoso.com", "alice@contoso.com", False),
        ("dave", "dave@contoso.com", False),  # no addresses: none to send as
        ("dave", "", True),  # the null sender (bounces) is anyone's
    ],
)
def test_an_authenticated_user_sends_only_as_its_own_addresses(
    start: Any, user: str, sender: str, allowed: bool
) -> None:
    running = _running(start)
    code, text = _mail_from(running, user, sender)
    assert (code, text) == ((250, b"2.1.0 Sender OK") if allowed else DENIED)
    assert len(running.messages()) == (1 if allowed else 0)


def test_accept_any_sender_lets_a_user_send_as_anyone_unless_denied(start: Any) -> None:
    users = Principal.AuthenticatedUsers.value
    running = _running(
        start,
        _entry(users, "ms-Exch-SMTP-Accept-Any-Sender", "Allow"),
        _entry("bob", "ms-Exch-SMTP-Accept-Any-Sender", "Deny"),
    )
    assert _mail_from(running, "alice", "ceo@foreign.example")[0] == 250
    assert _mail_from(running, "alice", "bob@contoso.com")[0] == 250
    assert _mail_from(running, "bob", "ceo@foreign.example") == DENIED
    assert _mail_from(running, "bob", "bob@contoso.com")[0] == 250
    # Denied Accept-Any-Sender: not even its own address outside the accepted domains.
    assert _mail_from(running, "bob", "bob@elsewhere.example") == DENIED


def test_a_denied_authoritative_domain_sender_keeps_a_user_off_its_domains(start: Any) -> None:
    running = _running(
        start, _entry("bob", "ms-Exch-SMTP-Accept-Authoritative-Domain-Sender", "Deny")
    )
    assert _mail_from(running, "bob", "bob@contoso.com") == DENIED  # authoritative
    assert _mail_from(running, "bob", "bob@sub.fabrikam.com")[0] == 250  # InternalRelay
    assert _mail_from(running, "bob", "bob@elsewhere.example")[0] == 250  # its own, listed
    assert _mail_from(running, "alice", "alice@contoso.com")[0] == 250
