"""A real Postfix instance on loopback as a receiver's next hop: its smtpd takes mail for
contoso.com and example.org, refuses or defers the recipients its access map names, and
its virtual delivery agent files every delivered recipient's copy into one maildir (the
sink), where a test counts them. Needs Debian's postfix package (``make postfix``) and
root (Postfix's daemons drop to the postfix user)."""

from __future__ import annotations

import calendar
import email
import email.message
import email.policy
import os
import pathlib
import pwd
import re
import shutil
import socket
import subprocess
import time

from .conftest import free_port

REFUSED = "refused@contoso.com"
# What Postfix's smtpd answers for REFUSED (it puts the address and its own words first).
REFUSAL = "550 5.1.1 <refused@contoso.com>: Recipient address rejected: no such mailbox here"


def available() -> str | None:
    """Why Postfix cannot run here, or None."""
    if shutil.which("postfix") is None:
        return "postfix is missing (make postfix)"
    if os.geteuid() != 0:
        return "Postfix needs root"
    return None


class PostfixHop:
    def __init__(
        self, work: pathlib.Path, deferred: tuple[str, ...] = (), settings: str = ""
    ) -> None:
        """``settings``: main.cf lines on top of the hop's own (e.g. its TLS)."""
        self.work = work
        self.conf = work / "postfix"
        self.sink = work / "sink"
        self.port = free_port()
        self.conf.mkdir(parents=True)
        work.chmod(0o755)
        for sub in ("postfix-queue", "postfix-data", "sink"):
            (work / sub).mkdir()
        user = pwd.getpwnam("postfix")
        for sub in ("postfix-data", "sink"):
            os.chown(work / sub, user.pw_uid, user.pw_gid)
        # Postfix's log file, the postfix user's: postsuper, which ``postfix start`` runs
        # after dropping to that user, writes to it itself when it has something to say
        # (a queue file a stop cut short), and a file only root may open ends the start.
        (work / "postfix.log").touch(0o644)
        os.chown(work / "postfix.log", user.pw_uid, user.pw_gid)
        self.access(deferred)
        (self.conf / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {work}/postfix-queue
data_directory = {work}/postfix-data
mail_owner = postfix
setgid_group = postdrop
myhostname = hop.localdomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = contoso.com example.org
virtual_mailbox_base = {work}
virtual_mailbox_maps = static:sink/
virtual_uid_maps = static:{user.pw_uid}
virtual_gid_maps = static:{user.pw_gid}
virtual_destination_recipient_limit = 1
smtpd_recipient_restrictions = check_recipient_access texthash:{self.conf}/access,
    permit_mynetworks, reject_unauth_destination
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
maillog_file = {work}/postfix.log
maillog_file_prefixes = {work}
{settings}
""")
        master = pathlib.Path("/etc/postfix/master.cf").read_text()
        master = re.sub(
            r"^smtp\s+inet\s.*$", f"127.0.0.1:{self.port} inet n - y - - smtpd", master, flags=re.M
        )
        (self.conf / "master.cf").write_text(master)

    def access(self, deferred: tuple[str, ...] = ()) -> None:
        """The smtpd's recipient map: REFUSED always, ``deferred`` with 450 for now."""
        lines = [f"{REFUSED} 550 5.1.1 no such mailbox here"]
        lines += [f"{address} 450 4.2.0 Try again later" for address in deferred]
        (self.conf / "access").write_text("\n".join(lines) + "\n")

    def postfix(self, command: str) -> None:
        done = subprocess.run(
            ["postfix", "-c", str(self.conf), command], capture_output=True, text=True
        )
        assert done.returncode == 0, f"postfix {command}: {done.stderr}"

    def start(self) -> None:
        self.postfix("start")
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "postfix did not listen"
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop Postfix: its smtpd no longer listens once this returns."""
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            except OSError:
                return
            time.sleep(0.1)
        raise AssertionError("postfix still listens")

    def delivered(self) -> list[email.message.Message]:
        """Every recipient's copy in the sink (Delivered-To says whose, Return-Path the
        envelope sender)."""
        found = []
        for folder in ("new", "cur"):
            path = self.sink / folder
            if path.is_dir():
                for entry in sorted(path.iterdir()):
                    found.append(email.message_from_bytes(entry.read_bytes()))
        return found

    def accepted_at(self, message_id: str) -> list[float]:
        """When Postfix's cleanup took each copy of ``message_id`` into its queue (the
        log's whole seconds, as epoch seconds)."""
        found = []
        year = time.gmtime().tm_year
        for line in (self.work / "postfix.log").read_text(errors="replace").splitlines():
            if "/cleanup[" in line and f"message-id={message_id}" in line:
                stamp = time.strptime(f"{year} {line[:15]}", "%Y %b %d %H:%M:%S")
                found.append(calendar.timegm(stamp))
        return found

    def wait_delivered(self, count: int, seconds: float) -> list[email.message.Message]:
        deadline = time.monotonic() + seconds
        while True:
            found = self.delivered()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.25)
