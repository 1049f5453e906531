"""AUTH NTLM ([MS-SMTPNTLM]) from NT hashes, with curl's SMTP client: a user of the hash
file is an authenticated user on connectors with Integrated."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from typing import Any

import pytest
from smtpgate.connectors.kerberos import NtlmConfig
from spnego._ntlm_raw.crypto import ntowfv1  # the tests' own NT hashes of known passwords

from .conftest import PASSWORDS, Running
from .helpers import Raw
from .test_gssapi import CLIENT_FRONTEND, MESSAGE, default_connectors

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def nt_hash(password: str) -> str:
    return ntowfv1(password).hex()


def hash_file(folder: pathlib.Path) -> pathlib.Path:
    path = folder / "ntlm"
    path.write_text(
        "# name:NT hash\n"
        + "".join(f"{name}:{nt_hash(pw)}\n" for name, pw in PASSWORDS.items())
        + "carol:plain-password-is-not-a-hash\n"
    )
    return path


def curl_ntlm(
    port: int, user: str, sender: str = "alice@contoso.com"
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "curl", "-sS", "-v", f"smtp://127.0.0.1:{port}/client.example",
            "--login-options", "AUTH=NTLM", "-u", user,
            "--mail-from", sender, "--mail-rcpt", "bob@contoso.com", "-T", "-",
        ],
        input=MESSAGE,
        env={**os.environ, "LANG": "C"},
        capture_output=True,
        timeout=60,
    )  # fmt: skip


@pytest.fixture
def ntlm_receiver(start: Any, tmp_path: pathlib.Path) -> Running:
    config = NtlmConfig(hashes_file=str(hash_file(tmp_path)), domain="CONTOSO")
    running: Running = start(default_connectors(), ntlm=config)
    return running


@needs_curl
def test_curl_authenticates_with_ntlm_and_submits(ntlm_receiver: Running) -> None:
    done = curl_ntlm(ntlm_receiver.port(CLIENT_FRONTEND), "alice:alice-secret")
    log = done.stderr.decode(errors="replace")
    assert done.returncode == 0, log
    assert "AUTH NTLM" in log and "235 2.7.0" in log
    [message] = ntlm_receiver.messages()
    assert message.endswith(MESSAGE)


@needs_curl
def test_curl_ntlm_with_the_domain(ntlm_receiver: Running) -> None:
    done = curl_ntlm(
        ntlm_receiver.port(CLIENT_FRONTEND), "CONTOSO\\bob:bob-secret", "bob@contoso.com"
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")


@needs_curl
def test_curl_ntlm_wrong_password_is_refused(ntlm_receiver: Running) -> None:
    done = curl_ntlm(ntlm_receiver.port(CLIENT_FRONTEND), "alice:wrong")
    log = done.stderr.decode(errors="replace")
    assert done.returncode != 0
    assert "535 5.7.8" in log
    assert ntlm_receiver.messages() == []


def test_ntlm_without_initial_response_says_supported(ntlm_receiver: Running) -> None:
    raw = Raw(ntlm_receiver.port(CLIENT_FRONTEND))
    raw.reply()
    code, text = raw.command("EHLO client.example")
    assert "AUTH NTLM" in text.splitlines()
    assert raw.command("AUTH NTLM") == (334, "NTLM supported")
    assert raw.command("*") == (501, "5.7.0 Authentication cancelled")


def test_a_plain_password_line_is_no_hash(ntlm_receiver: Running) -> None:
    from smtpgate.receiver import sasl_ntlm

    found = sasl_ntlm.parse_hashes(hash_file(pathlib.Path(ntlm_receiver.spool.parent)).read_text())
    assert set(found) == set(PASSWORDS)


@needs_curl
def test_a_changed_hash_file_is_used_from_the_next_logon(ntlm_receiver: Running) -> None:
    port = ntlm_receiver.port(CLIENT_FRONTEND)
    assert curl_ntlm(port, "alice:alice-secret").returncode == 0
    hashes = pathlib.Path(ntlm_receiver.config.ntlm.hashes_file)  # type: ignore[union-attr]
    hashes.write_text(f"alice:{nt_hash('rotated-secret')}\n")
    assert curl_ntlm(port, "alice:alice-secret").returncode != 0
    assert curl_ntlm(port, "alice:rotated-secret").returncode == 0


def _ntlm_logon(raw: Raw, user: str, password: str) -> tuple[int, str]:
    """pyspnego's NTLM client through AUTH NTLM: the reply to its AUTHENTICATE."""
    import base64

    import spnego

    client = spnego.client(user, password, protocol="ntlm")
    code, text = raw.command("AUTH NTLM " + base64.b64encode(client.step()).decode())
    assert code == 334
    token = client.step(base64.b64decode(text))
    return raw.command(base64.b64encode(token).decode())


@pytest.mark.parametrize("spelling", ["BOB", "Bob", "CONTOSO\\BOB"])
def test_ntlm_user_is_the_hash_file_name_whatever_case_the_client_writes(
    start: Any, tmp_path: pathlib.Path, spelling: str
) -> None:
    # NTLM matches user names without regard to case; the logon is the hash file's user,
    # so a Deny entry naming bob holds for BOB, and bob's send-as list applies.
    connector = {
        "usage": "Custom",
        "bindings": ["0.0.0.0:25"],
        "remoteIPRanges": ["127.0.0.0/8"],
        "authMechanisms": ["Integrated"],
        "permissionGroups": ["ExchangeUsers"],
        "tarpitIntervalSeconds": 0,
        "permissions": [
            {
                "principal": "alice",
                "extendedRights": ["ms-Exch-SMTP-Submit"],
                "access": "Deny",
            }
        ],
    }
    config = NtlmConfig(hashes_file=str(hash_file(tmp_path)), domain="CONTOSO")
    running = start([("Custom", connector)], ntlm=config)
    denied = Raw(running.port(25))
    denied.reply()
    denied.command("EHLO client.example")
    alice = spelling.replace("BOB", "ALICE").replace("Bob", "Alice")
    answer = _ntlm_logon(denied, alice, "alice-secret")
    assert answer == (530, "5.7.1 Client is not permitted to submit on this connector")
    raw = Raw(running.port(25))
    raw.reply()
    raw.command("EHLO client.example")
    assert _ntlm_logon(raw, spelling, "bob-secret") == (235, "2.7.0 Authentication successful")
    assert raw.command("MAIL FROM:<bob@contoso.com>")[0] == 250


def _session(running: Running) -> Raw:
    raw = Raw(running.port(CLIENT_FRONTEND))
    raw.reply()
    raw.command("EHLO client.example")
    return raw


def test_ntlm_user_of_another_domain_is_refused(ntlm_receiver: Running) -> None:
    # The receiver's domain is CONTOSO: FABRIKAM\alice, with alice's password, is nobody.
    raw = _session(ntlm_receiver)
    assert _ntlm_logon(raw, "FABRIKAM\\alice", "alice-secret")[0] == 535
    assert _ntlm_logon(raw, "CONTOSO\\alice", "alice-secret")[0] == 235


@pytest.mark.parametrize("level", ["0", "1", "2"])
def test_ntlmv1_and_lm_responses_are_refused(
    ntlm_receiver: Running, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    # pyspnego's client at LM compatibility levels 0-2 answers with LM and NTLMv1
    # responses, never NTLMv2: the right password, and still refused.
    monkeypatch.setenv("LM_COMPAT_LEVEL", level)
    raw = _session(ntlm_receiver)
    assert _ntlm_logon(raw, "alice", "alice-secret") == (
        535,
        "5.7.8 Authentication credentials invalid",
    )


def test_ntlm_anonymous_logon_is_refused(ntlm_receiver: Running) -> None:
    import base64

    import spnego
    from spnego._ntlm_raw.messages import Authenticate, NegotiateFlags

    client = spnego.client("alice", "alice-secret", protocol="ntlm")
    raw = _session(ntlm_receiver)
    code, text = raw.command("AUTH NTLM " + base64.b64encode(client.step()).decode())
    assert code == 334
    flags = NegotiateFlags.unicode | NegotiateFlags.ntlm | NegotiateFlags.anonymous
    null = Authenticate(flags, b"", b"", "", "", "").pack()
    assert raw.command(base64.b64encode(null).decode()) == (
        535,
        "5.7.8 Authentication credentials invalid",
    )
