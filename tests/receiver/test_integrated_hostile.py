"""Hostile AUTH GSSAPI and AUTH NTLM exchanges, from python-gssapi and pyspnego clients
against a real KDC: each is refused with the right reply and counted as a failed logon
(the connector allows two: the second closes the session)."""

from __future__ import annotations

import base64
import logging
import pathlib
import statistics
import time
from typing import Any

import gssapi
import pytest
import spnego
from smtpgate.connectors.kerberos import NtlmConfig

from .conftest import Running
from .helpers import Raw
from .kdc import OTHER_REALM, REALM
from .test_gssapi import CLIENT_FRONTEND, default_connectors, kerberos_config
from .test_ntlm import hash_file

TOO_MANY = (421, "4.7.0 Too many failed logons, closing")
FAILED = (535, "5.7.8 Authentication credentials invalid")
CANCELLED = (501, "5.7.0 Authentication cancelled")
BAD_BASE64 = (501, "5.5.2 Cannot decode the response as base64")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _connectors() -> list[tuple[str, dict[str, Any]]]:
    out = default_connectors()
    for _, data in out:
        if any(b.endswith(":587") for b in data["bindings"]):
            data["maxLogonFailures"] = 2
            data["maxProtocolErrors"] = 20
    return out


@pytest.fixture
def receiver(start: Any, realm: Any, tmp_path: pathlib.Path) -> Running:
    ntlm = NtlmConfig(hashes_file=str(hash_file(tmp_path)))
    running: Running = start(_connectors(), kerberos=kerberos_config(realm), ntlm=ntlm)
    return running


def initiator(target: str) -> gssapi.SecurityContext:
    name = gssapi.Name(target, gssapi.NameType.kerberos_principal)
    flags = gssapi.RequirementFlag.mutual_authentication
    return gssapi.SecurityContext(name=name, usage="initiate", flags=flags)


def session(receiver: Running) -> Raw:
    raw = Raw(receiver.port(CLIENT_FRONTEND))
    assert raw.reply()[0] == 220
    code, text = raw.command("EHLO client.example")
    assert "AUTH GSSAPI NTLM" in text
    return raw


def finish_gssapi(
    raw: Raw, context: gssapi.SecurityContext, first: tuple[int, str]
) -> tuple[int, str]:
    """A well-behaved RFC 4752 client from the server's first answer on: context tokens,
    the empty answer to the last one, then the choice of no security layer."""
    code, text = first
    while code == 334:
        token = base64.b64decode(text)
        if not context.complete:
            out = context.step(token)
            code, text = raw.command(b64(out or b""))
            continue
        offer = context.unwrap(token).message
        assert offer == b"\x01\x00\x00\x00"  # no layer, and no maximum size
        code, text = raw.command(b64(context.wrap(b"\x01\x00\x00\x00", False).message))
    return code, text


def failed_twice(raw: Raw, attempt: Any, first: tuple[int, str]) -> None:
    """``attempt`` is refused with ``first``, and a second one closes the session."""
    assert attempt() == first
    assert attempt() == TOO_MANY
    assert raw.closed()


def test_python_gssapi_client_with_mutual_authentication_logs_on(
    receiver: Running, as_user: Any
) -> None:
    as_user("alice", "alice-secret")
    raw = session(receiver)
    context = initiator(f"smtp/mail.contoso.com@{REALM}")
    first = raw.command("AUTH GSSAPI " + b64(context.step()))
    assert first[0] == 334 and base64.b64decode(first[1])  # the AP-REP of mutual auth
    assert finish_gssapi(raw, context, first) == (235, "2.7.0 Authentication successful")
    assert raw.command("MAIL FROM:<alice@contoso.com>")[0] == 250


def test_wrong_service_principal_is_refused(receiver: Running, as_user: Any) -> None:
    # The keytab holds HTTP/mail.contoso.com too; the receiver takes only its smtp/ ones.
    as_user("alice", "alice-secret")
    raw = session(receiver)

    def attempt() -> tuple[int, str]:
        context = initiator(f"HTTP/mail.contoso.com@{REALM}")
        return finish_gssapi(raw, context, raw.command("AUTH GSSAPI " + b64(context.step())))

    failed_twice(raw, attempt, FAILED)


def test_ticket_of_another_realm_is_refused(receiver: Running, as_user: Any) -> None:
    as_user(f"eve@{OTHER_REALM}", "eve-secret")
    raw = session(receiver)

    def attempt() -> tuple[int, str]:
        context = initiator(f"smtp/mail.contoso.com@{OTHER_REALM}")
        return raw.command("AUTH GSSAPI " + b64(context.step()))

    failed_twice(raw, attempt, FAILED)


def test_user_of_a_trusted_realm_is_not_a_user_here(
    receiver: Running, as_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # eve@OTHER.TEST holds a valid cross-realm ticket for this server's own principal: the
    # context is established, and the realm is not the server's.
    as_user(f"eve@{OTHER_REALM}", "eve-secret")
    raw = session(receiver)

    def attempt() -> tuple[int, str]:
        context = initiator(f"smtp/mail.contoso.com@{REALM}")
        return finish_gssapi(raw, context, raw.command("AUTH GSSAPI " + b64(context.step())))

    caplog.set_level(logging.INFO, logger="smtpgate.receiver.sasl")
    failed_twice(raw, attempt, FAILED)
    assert f"eve@{OTHER_REALM} holds nothing on this connector" in caplog.text


def test_expired_ticket_is_refused(receiver: Running, as_user: Any) -> None:
    as_user("brief", "brief-secret")  # tickets that live 3 seconds
    tokens = [initiator(f"smtp/mail.contoso.com@{REALM}").step() for _ in range(2)]
    time.sleep(5)  # past the end of the ticket and the 1 second of clock skew allowed
    raw = session(receiver)
    failed_twice(raw, lambda: raw.command("AUTH GSSAPI " + b64(tokens.pop())), FAILED)


def test_replayed_token_is_refused(receiver: Running, as_user: Any) -> None:
    as_user("alice", "alice-secret")
    context = initiator(f"smtp/mail.contoso.com@{REALM}")
    token = context.step()
    raw = session(receiver)
    first = raw.command("AUTH GSSAPI " + b64(token))
    assert finish_gssapi(raw, context, first)[0] == 235
    thief = session(receiver)
    failed_twice(thief, lambda: thief.command("AUTH GSSAPI " + b64(token)), FAILED)


def test_garbage_base64_is_refused(receiver: Running) -> None:
    raw = session(receiver)
    failed_twice(raw, lambda: raw.command("AUTH GSSAPI !!not*base64"), BAD_BASE64)


def test_garbage_base64_in_a_response_is_refused(receiver: Running) -> None:
    raw = session(receiver)

    def attempt() -> tuple[int, str]:
        assert raw.command("AUTH GSSAPI") == (334, "")
        return raw.command("%%%%")

    failed_twice(raw, attempt, BAD_BASE64)


def test_token_split_over_many_lines_is_refused(receiver: Running, as_user: Any) -> None:
    as_user("alice", "alice-secret")
    raw = session(receiver)
    text = b64(initiator(f"smtp/mail.contoso.com@{REALM}").step())
    size = (len(text) // 4 + 3) // 4 * 4  # four lines of whole base64 quanta
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    assert len(pieces) == 4
    assert raw.command("AUTH GSSAPI") == (334, "")
    raw.send("".join(p + "\r\n" for p in pieces).encode())
    assert raw.reply() == FAILED  # the first line alone is no GSS-API token
    rest = [raw.reply() for _ in pieces[1:]]  # the others are commands nobody knows
    assert all(code == 500 for code, _ in rest), rest
    assert raw.command("AUTH GSSAPI =") == TOO_MANY  # the split token was a failed logon


def test_star_cancels_and_counts_as_a_failed_logon(receiver: Running) -> None:
    raw = session(receiver)

    def attempt() -> tuple[int, str]:
        assert raw.command("AUTH GSSAPI") == (334, "")
        return raw.command("*")

    failed_twice(raw, attempt, CANCELLED)


def test_response_over_12288_octets_is_refused(receiver: Running) -> None:
    raw = session(receiver)
    assert raw.command("AUTH GSSAPI") == (334, "")
    assert raw.command("A" * 13000) == (500, "5.5.6 Authentication response too long")


def ntlm_attempt(raw: Raw, user: str, password: str) -> tuple[tuple[int, str], float]:
    """An NTLM exchange; the reply to AUTHENTICATE and how long it took."""
    client = spnego.client(user, password, protocol="ntlm")
    code, text = raw.command("AUTH NTLM " + b64(client.step()))
    assert code == 334
    authenticate = client.step(base64.b64decode(text))
    started = time.perf_counter()
    answer = raw.command(b64(authenticate))
    return answer, time.perf_counter() - started


def test_ntlm_wrong_hash_is_refused(receiver: Running) -> None:
    raw = session(receiver)
    failed_twice(raw, lambda: ntlm_attempt(raw, "alice", "not-alices")[0], FAILED)


def test_ntlm_unknown_user_is_refused(receiver: Running) -> None:
    raw = session(receiver)
    failed_twice(raw, lambda: ntlm_attempt(raw, "mallory", "whatever")[0], FAILED)


def test_ntlm_unknown_user_takes_as_long_as_a_wrong_hash(receiver: Running) -> None:
    """Medians of 25 refusals each, interleaved: no difference beyond the loopback's noise
    (a millisecond and a half; the refusal floor is 50 ms, the lookup a few microseconds)."""
    known: list[float] = []
    unknown: list[float] = []
    for _ in range(25):
        for user, times in (("alice", known), ("mallory", unknown)):
            raw = session(receiver)
            answer, took = ntlm_attempt(raw, user, "wrong-password")
            assert answer == FAILED
            times.append(took)
            raw.close()
    difference = abs(statistics.median(known) - statistics.median(unknown))
    print(f"NTLM refusal median: known {statistics.median(known) * 1000:.2f} ms, "
          f"unknown {statistics.median(unknown) * 1000:.2f} ms")  # fmt: skip
    assert min(known + unknown) >= 0.049  # the floor (asyncio may wake a hair early)
    assert difference < 0.0015, (known, unknown)


def test_ntlm_cancel_counts_as_a_failed_logon(receiver: Running) -> None:
    raw = session(receiver)

    def attempt() -> tuple[int, str]:
        assert raw.command("AUTH NTLM") == (334, "NTLM supported")
        return raw.command("*")

    failed_twice(raw, attempt, CANCELLED)


def layer_exchange(raw: Raw, choice: bytes) -> tuple[int, str]:
    """A GSSAPI exchange whose client answers the server's security-layer offer with
    ``choice`` (wrapped), after a proper context with mutual authentication."""
    context = initiator(f"smtp/mail.contoso.com@{REALM}")
    code, text = raw.command("AUTH GSSAPI " + b64(context.step()))
    context.step(base64.b64decode(text))  # the AP-REP
    assert context.complete
    code, text = raw.command("")  # the empty answer to the last context token
    assert code == 334
    assert context.unwrap(base64.b64decode(text)).message == b"\x01\x00\x00\x00"
    return raw.command(b64(context.wrap(choice, False).message))


@pytest.mark.parametrize(
    ("choice", "answer"),
    [
        (b"\x01\x00\x00\x00", (235, "2.7.0 Authentication successful")),
        (b"\x01\x00\x10\x00alice", (235, "2.7.0 Authentication successful")),
        (b"\x01\x00\x00\x00alice@" + REALM.encode(), (235, "2.7.0 Authentication successful")),
        (b"\x02\x00\x10\x00", FAILED),  # integrity: not offered
        (b"\x04\x00\x10\x00", FAILED),  # confidentiality: not offered
        (b"\x01\x00\x00", FAILED),  # shorter than four octets
        (
            b"\x01\x00\x00\x00bob",
            (535, "5.7.8 Authorization identity must be empty or the authentication identity"),
        ),
    ],
)
def test_security_layer_negotiation(
    receiver: Running, as_user: Any, choice: bytes, answer: tuple[int, str]
) -> None:
    as_user("alice", "alice-secret")
    raw = session(receiver)
    assert layer_exchange(raw, choice) == answer


def test_a_non_empty_answer_to_the_last_context_token_is_refused(
    receiver: Running, as_user: Any
) -> None:
    as_user("alice", "alice-secret")
    raw = session(receiver)
    context = initiator(f"smtp/mail.contoso.com@{REALM}")
    code, text = raw.command("AUTH GSSAPI " + b64(context.step()))
    assert code == 334 and text  # the AP-REP: the client must answer it with nothing
    assert raw.command(b64(b"something")) == FAILED


def test_spnego_wrapped_kerberos_is_refused(
    receiver: Running, as_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # RFC 4752 is Kerberos V5 alone: a SPNEGO token (which could carry IAKERB, or NTLM
    # through a GSS plug-in) is not AUTH GSSAPI, even with a good ticket inside.
    as_user("alice", "alice-secret")
    raw = session(receiver)

    def attempt() -> tuple[int, str]:
        name = gssapi.Name(f"smtp/mail.contoso.com@{REALM}", gssapi.NameType.kerberos_principal)
        spnego_mech = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
        context = gssapi.SecurityContext(
            name=name,
            usage="initiate",
            mech=spnego_mech,
            flags=gssapi.RequirementFlag.mutual_authentication,
        )
        return finish_gssapi(raw, context, raw.command("AUTH GSSAPI " + b64(context.step())))

    caplog.set_level(logging.INFO, logger="smtpgate.receiver.sasl")
    failed_twice(raw, attempt, FAILED)


def test_protocol_log_holds_no_gssapi_or_ntlm_token(
    start: Any, realm: Any, as_user: Any, tmp_path: pathlib.Path
) -> None:
    from smtpgate.receiver.protocol_log import ProtocolLog

    log_file = tmp_path / "RECV.LOG"
    plog = ProtocolLog(str(log_file))
    connectors = _connectors()
    for _, data in connectors:
        data["protocolLoggingLevel"] = "Verbose"
    ntlm = NtlmConfig(hashes_file=str(hash_file(tmp_path)))
    running = start(connectors, kerberos=kerberos_config(realm), ntlm=ntlm, protocol_log=plog)
    as_user("alice", "alice-secret")
    sent: list[str] = []
    raw = session(running)
    context = initiator(f"smtp/mail.contoso.com@{REALM}")
    sent.append(b64(context.step()))
    assert raw.command("AUTH GSSAPI " + sent[-1])[0] == 334
    raw.close()
    raw = session(running)
    context = initiator(f"smtp/mail.contoso.com@{REALM}")
    assert raw.command("AUTH GSSAPI") == (334, "")
    sent.append(b64(context.step()))
    assert finish_gssapi(raw, context, raw.command(sent[-1]))[0] == 235
    raw.close()
    raw = session(running)
    client = spnego.client("bob", "bob-secret", protocol="ntlm")
    assert raw.command("AUTH NTLM") == (334, "NTLM supported")
    sent.append(b64(client.step()))
    code, text = raw.command(sent[-1])
    sent.append(b64(client.step(base64.b64decode(text))))
    assert raw.command(sent[-1])[0] == 235
    raw.close()
    running.stop()
    plog.close()
    text = log_file.read_text()
    assert "AUTH GSSAPI ****" in text and "AUTH NTLM" in text
    for token in sent:
        assert token[:24] not in text


def test_no_second_logon_and_none_inside_a_transaction(receiver: Running, as_user: Any) -> None:
    as_user("alice", "alice-secret")
    raw = session(receiver)
    assert raw.command("AUTH NTLM")[0] == 334
    assert raw.command("*") == CANCELLED  # nothing of it stays
    context = initiator(f"smtp/mail.contoso.com@{REALM}")
    first = raw.command("AUTH GSSAPI " + b64(context.step()))
    assert finish_gssapi(raw, context, first)[0] == 235
    assert raw.command("MAIL FROM:<alice@contoso.com>")[0] == 250
    for again in ("AUTH GSSAPI =", "AUTH NTLM", "X-EXPS GSSAPI ="):
        assert raw.command(again)[0] == 503, again
    assert raw.command("RSET")[0] == 250
    for again in ("AUTH GSSAPI =", "AUTH NTLM"):
        assert raw.command(again)[0] == 503, again


@pytest.mark.parametrize(
    "negotiate",
    [
        b"NTLMSSP\x00\x63\x00\x00\x00" + bytes(24),  # a message type NTLM has not
        b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(8),  # a cut-short AUTHENTICATE first
        b"not NTLM at all",
    ],
)
def test_ntlm_malformed_first_message_is_a_failed_logon(
    receiver: Running, negotiate: bytes
) -> None:
    raw = session(receiver)
    failed_twice(raw, lambda: raw.command("AUTH NTLM " + b64(negotiate)), FAILED)


def test_gss_and_ntlm_calls_run_off_the_event_loop(
    receiver: Running, as_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call into python-gssapi's and pyspnego's contexts (the acceptors read the
    keytab, the replay cache and the hash file) is made where no event loop runs: on the
    receiver's threads, never on its loop. The calls are observed, not replaced (the
    test's own client calls run on its thread, where no loop runs either)."""
    import asyncio

    import spnego._ntlm

    on_loop: list[str] = []

    def observed(cls: Any, name: str) -> None:
        real = getattr(cls, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop.append(f"{cls.__name__}.{name}")
            except RuntimeError:
                pass
            return real(*args, **kwargs)

        monkeypatch.setattr(cls, name, call)

    for cls, name in (
        (gssapi.SecurityContext, "step"),
        (gssapi.SecurityContext, "wrap"),
        (gssapi.SecurityContext, "unwrap"),
        (spnego._ntlm.NTLMProxy, "step"),
    ):
        observed(cls, name)
    as_user("alice", "alice-secret")
    raw = session(receiver)
    context = initiator(f"smtp/mail.contoso.com@{REALM}")
    first = raw.command("AUTH GSSAPI " + b64(context.step()))
    assert finish_gssapi(raw, context, first)[0] == 235
    raw = session(receiver)
    assert ntlm_attempt(raw, "bob", "bob-secret")[0][0] == 235
    assert on_loop == []


def test_ntlm_logons_add_and_remove_no_environment_variables(receiver: Running) -> None:
    """pyspnego reads its settings from the environment, which the C libraries on other
    threads (MIT Kerberos: KRB5_CONFIG, KRB5RCACHEDIR) read unlocked: once set by the
    first logon, NTLM's variables stay, so later logons never add or remove one (glibc
    moves the array under a reader then: a missed KRB5RCACHEDIR, or freed memory)."""
    import os
    import threading

    raw = session(receiver)
    assert ntlm_attempt(raw, "alice", "alice-secret")[0][0] == 235
    before = set(os.environ)
    seen: list[set[str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            keys = set(os.environ)
            if keys != before:
                seen.append(keys ^ before)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(10):
            raw = session(receiver)
            assert ntlm_attempt(raw, "bob", "bob-secret")[0][0] == 235
            raw.close()
    finally:
        done.set()
        watcher.join()
    assert seen == []


MAILBOX_DELIVERY = 475  # ExchangeServer only: X-EXPS GSSAPI and AUTH GSSAPI for servers


@pytest.mark.parametrize(
    "lookalike",
    [
        "SMTP/ex02.contoso.com",  # the server's principal is smtp/ex02.contoso.com: case
        "smtp/ex02.contoso.com/extra",  # a third component
        "user/smtp/ex02.contoso.com",  # the server's name after a user's
    ],
)
def test_a_user_principal_named_like_a_server_is_no_server(
    receiver: Running, realm: Any, as_user: Any, lookalike: str
) -> None:
    # Principals the realm's administrators might make for users, each with a password:
    # none is the organisation's server smtp/ex02.contoso.com, and none is a user here.
    assert realm.server_principal == f"smtp/ex02.contoso.com@{REALM}"
    try:
        realm.kdc.add_user(lookalike, "lookalike-secret")
    except RuntimeError as error:
        assert "already exists" in str(error)
    as_user(lookalike, "lookalike-secret")
    for verb in ("X-EXPS", "AUTH"):
        raw = Raw(receiver.port(MAILBOX_DELIVERY))
        assert raw.reply()[0] == 220
        assert raw.command("EHLO client.example")[0] == 250
        context = initiator(f"smtp/mail.contoso.com@{REALM}")
        first = raw.command(f"{verb} GSSAPI " + b64(context.step()))
        assert finish_gssapi(raw, context, first) == FAILED, verb
