"""Config and certificate changes under a running receiver."""

from __future__ import annotations

import json
import pathlib
import smtplib
import time
from typing import Any

import bcrypt
from prometheus_client import REGISTRY
from smtpgate.receiver import delivery, relay
from smtpgate.receiver.reload import Watcher

from .conftest import FQDN, free_port
from .helpers import Raw, custom_connector
from .test_delivery import NextHop, _serve


def _start(start: Any, tmp_path: pathlib.Path, connectors: Any = None) -> tuple[Any, pathlib.Path]:
    running = start(
        connectors
        or [
            (
                "Internet",
                {
                    "usage": "Internet",
                    "bindings": ["0.0.0.0:25"],
                    "tarpitIntervalSeconds": 0,
                    "banner": "220 mail.contoso.com first config",
                },
            )
        ]
    )
    config_file = tmp_path / "config.json"
    config_file.write_text(running.config.to_json())
    watcher = Watcher(config_file, running.receiver, interval=0.1)
    running.loop.call_soon_threadsafe(lambda: running.loop.create_task(watcher.run()))
    return running, config_file


def _edit(config_file: pathlib.Path, change: Any) -> None:
    data = json.loads(config_file.read_text())
    change(data)
    tmp = config_file.with_suffix(".new")
    tmp.write_text(json.dumps(data))
    tmp.replace(config_file)  # an atomic swap, as the kubelet does


def _banner(running: Any, port: int = 25) -> str:
    raw = Raw(running.port(port))
    return raw.reply()[1]


def _wait(check: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_new_sessions_use_the_new_config_while_live_ones_finish_under_the_old(
    start: Any, tmp_path: pathlib.Path
) -> None:
    running, config_file = _start(start, tmp_path)
    live = Raw(running.port(25))
    assert live.reply()[1] == "mail.contoso.com first config"
    live.command("EHLO client.example")

    def permit_relay(data: dict) -> None:
        connector = data["connectors"][0]
        connector["banner"] = "220 mail.contoso.com second config"
        connector["grants"]["NT AUTHORITY\\ANONYMOUS LOGON"].append(
            "ms-Exch-SMTP-Accept-Any-Recipient"
        )

    _edit(config_file, permit_relay)
    _wait(lambda: _banner(running) == "mail.contoso.com second config")
    # The live session keeps its config: still no relay, and it still delivers.
    live.command("MAIL FROM:<s@example.org>")
    assert live.command("RCPT TO:<x@foreign.example>")[0] == 550
    assert live.command("RCPT TO:<x@contoso.com>")[0] == 250
    live.command("DATA")
    live.send(b"Subject: live\r\n\r\nbody\r\n.\r\n")
    assert live.reply()[0] == 250
    fresh = Raw(running.port(25))
    fresh.reply()
    fresh.command("EHLO client.example")
    fresh.command("MAIL FROM:<s@example.org>")
    assert fresh.command("RCPT TO:<x@foreign.example>")[0] == 250


def test_broken_or_unknown_config_is_refused_and_the_last_good_serves(
    start: Any, tmp_path: pathlib.Path
) -> None:
    running, config_file = _start(start, tmp_path)
    good = json.loads(config_file.read_text())
    refused = REGISTRY.get_sample_value("smtpgate_config_reloads_total", {"result": "refused"}) or 0
    config_file.write_text("{ not json")
    _wait(
        lambda: (
            (REGISTRY.get_sample_value("smtpgate_config_reloads_total", {"result": "refused"}) or 0)
            == refused + 1
        )
    )
    assert _banner(running) == "mail.contoso.com first config"
    config_file.write_text(json.dumps({**good, "version": 2}))
    _wait(
        lambda: (
            (REGISTRY.get_sample_value("smtpgate_config_reloads_total", {"result": "refused"}) or 0)
            == refused + 2
        )
    )
    assert _banner(running) == "mail.contoso.com first config"


def test_added_binding_starts_listening(start: Any, tmp_path: pathlib.Path) -> None:
    running, config_file = _start(start, tmp_path)
    running.listen.ports[2526] = free_port()

    def add(data: dict) -> None:
        data["connectors"][0]["bindings"].append("0.0.0.0:2526")

    _edit(config_file, add)
    _wait(lambda: any(b.port == 2526 for b in running.receiver.listeners))
    assert _banner(running, 2526) == "mail.contoso.com first config"


def test_replaced_certificate_is_served_to_the_next_starttls(
    start: Any, tmp_path: pathlib.Path, pki: Any
) -> None:
    running, _ = _start(start, tmp_path)

    def serial() -> int:
        raw = Raw(running.port(25))
        raw.reply()
        raw.command("EHLO client.example")
        raw.command("STARTTLS")
        sock = raw.starttls(str(pki.ca_file), FQDN)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        from cryptography import x509

        return x509.load_der_x509_certificate(der).serial_number

    first = serial()
    cert, key = pki.issue("renewed", FQDN)
    # Overwrite the files the config names, as a renewed Secret does.
    pki.cert_file.write_bytes(cert.read_bytes())
    pki.key_file.write_bytes(key.read_bytes())
    _wait(lambda: serial() != first)


def _relay_to(port: int) -> Any:
    def change(data: dict) -> None:
        data["nextHop"] = {"type": "Smtp", "host": "127.0.0.1", "port": port}

    return change


def _message(raw: Raw, subject: str) -> int:
    raw.command("MAIL FROM:<s@example.org>")
    raw.command("RCPT TO:<u@contoso.com>")
    raw.command("DATA")
    raw.send(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
    return raw.reply()[0]


def test_a_changed_next_hop_takes_new_sessions_while_live_ones_keep_theirs(
    start: Any, tmp_path: pathlib.Path
) -> None:
    running, config_file = _start(start, tmp_path)
    running.hops = []
    try:
        _next_hop_changes(running, config_file, tmp_path)
    finally:
        for server in running.hops:
            server.close()
            running.call(server.wait_closed())


def _next_hop_changes(running: Any, config_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    spool = running.spool
    running.runtime.deliveries = lambda config: delivery.from_next_hop(
        config.next_hop, helo=config.fqdn
    )
    hop = NextHop()
    live = Raw(running.port(25))
    live.reply()
    live.command("EHLO client.example")
    _edit(config_file, _relay_to(_serve(running, hop)))
    _wait(lambda: isinstance(running.runtime.delivery, relay.RelayDelivery))
    fresh = Raw(running.port(25))
    fresh.reply()
    fresh.command("EHLO client.example")
    assert _message(fresh, "to the new next hop") == 250
    assert [b"to the new next hop" in m[2] for m in hop.messages] == [True]
    assert _message(live, "to the old spool") == 250  # the session's own delivery
    assert [p.read_bytes().count(b"to the old spool") for p in (spool / "new").iterdir()] == [1]
    live.command("QUIT")
    live.close()
    # Once its last session is gone the old spool's delivery is closed.
    _wait(lambda: not running.runtime._retired)
    moved = tmp_path / "moved-spool"
    _edit(config_file, lambda data: data.update(nextHop={"type": "Maildir", "path": str(moved)}))
    _wait(lambda: isinstance(running.runtime.delivery, delivery.MaildirDelivery))
    assert _message(fresh, "after the second change") == 250  # the session keeps the relay
    other = Raw(running.port(25))
    other.reply()
    other.command("EHLO client.example")
    assert _message(other, "to the moved spool") == 250
    assert len(list((moved / "new").iterdir())) == 1 and len(hop.messages) == 2
    fresh.command("QUIT")
    _wait(lambda: not running.runtime._retired)  # the relay's delivery closed


def test_a_rotated_password_is_refused_from_the_next_logon(
    start: Any, tmp_path: pathlib.Path
) -> None:
    running, config_file = _start(start, tmp_path, custom_connector())
    users = tmp_path / "users"
    users.write_text(f"erin:{_hash('first-secret')}:erin@contoso.com\n")
    _edit(config_file, lambda data: data.update(userDatabaseFile=str(users)))
    _wait(lambda: running.runtime.users is not None and "erin" in running.runtime.users.hashes)

    def logon(password: str) -> int:
        with smtplib.SMTP("127.0.0.1", running.port(25), timeout=10) as smtp:
            smtp.ehlo("client.example")
            try:
                return smtp.login("erin", password)[0]
            except smtplib.SMTPAuthenticationError as err:
                return err.smtp_code

    assert logon("first-secret") == 235
    signed_on = smtplib.SMTP("127.0.0.1", running.port(25), timeout=10)
    signed_on.ehlo("client.example")
    signed_on.login("erin", "first-secret")
    rotated = users.with_suffix(".new")
    rotated.write_text(f"erin:{_hash('second-secret')}:erin@contoso.com\n")
    rotated.replace(users)  # the kubelet's atomic swap
    _wait(lambda: logon("first-secret") == 535)
    assert logon("second-secret") == 235
    # A session that logged on before keeps its logon, as in Postfix and Exchange.
    assert (
        signed_on.sendmail("erin@contoso.com", ["u@contoso.com"], b"Subject: s\r\n\r\nb\r\n") == {}
    )
    signed_on.quit()
    users.unlink()  # unreadable: the last good database keeps serving
    time.sleep(0.3)
    assert logon("second-secret") == 235


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
