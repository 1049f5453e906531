"""A server authenticating to a server with Kerberos: Postfix's smtp client with Cyrus
SASL's GSSAPI plug-in, holding the keytab of another server of the organisation (ex02),
relays through the Mailbox delivery connector (475, ExchangeServer only) as an Exchange
server."""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from . import postfix
from .conftest import Running
from .test_gssapi import default_connectors, kerberos_config

MAILBOX_DELIVERY = 475
GSSAPI_PLUGINS = sorted(pathlib.Path("/usr/lib").glob("*/sasl2/libgssapiv2.so*"))
MESSAGE = b"Subject: from ex02\r\nFrom: alice@contoso.com\r\n\r\nrelayed by Postfix\r\n"


def _why_not() -> str | None:
    reason = postfix.missing()
    if reason is None and not GSSAPI_PLUGINS:
        reason = "Cyrus SASL's GSSAPI plug-in is missing (libsasl2-modules-gssapi-mit)"
    return reason


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


@pytest.fixture
def shared() -> Iterator[pathlib.Path]:
    """A folder Postfix's unprivileged daemons can read (pytest's are root's alone)."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-postfix-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _postfix(shared: pathlib.Path, realm: Any, port: int) -> postfix.Postfix:
    keytab = shared / "ex02.keytab"
    shutil.copy(realm.server_keytab, keytab)
    shutil.chown(keytab, "postfix", "postfix")
    krb5_conf = shared / "krb5.conf"
    shutil.copy(realm.kdc.krb5_conf, krb5_conf)
    krb5_conf.chmod(0o644)
    relayhost = f"[localhost]:{port}"
    return postfix.Postfix(
        shared / "postfix",
        relayhost,
        {
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_type": "cyrus",
            "smtp_sasl_mechanism_filter": "gssapi",
            # Postfix authenticates to a next hop it has an entry for; GSSAPI takes the
            # credentials from the keytab, not from the entry.
            "smtp_sasl_password_maps": f"texthash:{shared / 'postfix' / 'etc' / 'sasl_passwd'}",
        },
        {
            "KRB5_CONFIG": str(krb5_conf),
            "KRB5_CLIENT_KTNAME": str(keytab),
            "KRB5CCNAME": "MEMORY:ex02",
        },
        files={"sasl_passwd": f"{relayhost} smtp/ex02.contoso.com:unused\n"},
    )


def test_postfix_relays_as_an_exchange_server_with_cyrus_gssapi(
    start: Any, realm: Any, shared: pathlib.Path
) -> None:
    receiver: Running = start(default_connectors(), kerberos=kerberos_config(realm))
    sender = _postfix(shared, realm, receiver.port(MAILBOX_DELIVERY))
    try:
        # Outside the accepted domains: only an Exchange server (Accept-Any-Recipient) may.
        sender.send("alice@contoso.com", "someone@example.net", MESSAGE)
        log = sender.wait_log("status=")
        assert "status=sent" in log, log
    finally:
        sender.stop()
    [message] = receiver.messages()
    assert message.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])
