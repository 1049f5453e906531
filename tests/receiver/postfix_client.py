"""Postfix as a sending MTA for the tests: its own instance (config, queue, log in a
folder), relaying everything to a receiver port with a client certificate
(``smtp_tls_cert_file``, ``smtp_tls_security_level = encrypt``); mail goes in with
Postfix's ``sendmail``. Needs Debian's postfix package and root (its daemons run as the
postfix user)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time

AVAILABLE = shutil.which("postfix") is not None and os.geteuid() == 0
REASON = "Postfix (Debian's postfix package) and root are needed"


class Postfix:
    """One Postfix instance that relays to ``127.0.0.1:port``."""

    def __init__(
        self,
        port: int,
        cert: pathlib.Path | None,
        key: pathlib.Path | None,
        myhostname: str = "relay.fabrikam.com",
    ) -> None:
        # Its own folder that the postfix user can reach (pytest's tmp_path is root's alone).
        self.work = work = pathlib.Path(tempfile.mkdtemp(prefix="smtpgate-postfix-"))
        work.chmod(0o755)
        self.conf = work / "conf"
        self.conf.mkdir()
        (work / "queue").mkdir()
        (work / "data").mkdir()
        shutil.chown(work / "data", "postfix")
        self.log = work / "postfix.log"
        tls = ""
        if cert is not None and key is not None:
            shutil.copy(cert, work / "client.crt")
            shutil.copy(key, work / "client.key")
            tls = f"smtp_tls_cert_file = {work}/client.crt\nsmtp_tls_key_file = {work}/client.key\n"
        (self.conf / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {work}/queue
data_directory = {work}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {myhostname}
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
master_service_disable = inet
relayhost = [127.0.0.1]:{port}
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
{tls}maillog_file = {self.log}
maillog_file_prefixes = {work}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""
        )
        master = pathlib.Path("/etc/postfix/master.cf").read_text()
        # No chroot: the instance lives in a temporary folder, not under /var/spool.
        master = re.sub(r"^(\S+\s+\S+\s+\S+\s+\S+\s+)y(\s)", r"\1n\2", master, flags=re.M)
        (self.conf / "master.cf").write_text(master)
        started = subprocess.run(
            ["postfix", "-c", str(self.conf), "start"], capture_output=True, text=True
        )
        if started.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"postfix did not start: {started.stdout}{started.stderr}")

    def sendmail(self, sender: str, recipient: str, subject: str = "via postfix") -> None:
        message = f"From: <{sender}>\nTo: <{recipient}>\nSubject: {subject}\n\nhello\n"
        subprocess.run(
            ["sendmail", "-C", str(self.conf), "-f", sender, recipient],
            input=message.encode(),
            check=True,
            timeout=30,
        )

    def wait_log(self, pattern: str, timeout: float = 30) -> str:
        """The first log line matching ``pattern`` (a regular expression)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            text = self.log.read_text() if self.log.exists() else ""
            for line in text.splitlines():
                if regex.search(line):
                    return line
            time.sleep(0.2)
        raise AssertionError(f"no log line matches {pattern!r}:\n{text[-3000:]}")

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True, check=False)
        subprocess.run(["postfix", "-c", str(self.conf), "abort"], capture_output=True, check=False)
        shutil.rmtree(self.work, ignore_errors=True)
