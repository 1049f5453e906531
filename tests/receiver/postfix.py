"""A private Postfix instance whose smtp client relays everything to one next hop, for
tests that need Postfix as the sending server (Debian's postfix; root, as Postfix's
master runs). Its own config, queue and data folders under the test's folder; its mail
log in a file there; stopped and its processes gone when the test ends."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import time

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def missing() -> str | None:
    """Why this cannot run here, or None."""
    if not (os.path.exists(POSTFIX) and os.path.exists(SENDMAIL)):
        return "Postfix is not installed (make kerberos installs it)"
    if os.geteuid() != 0:
        return "Postfix's master runs as root"
    return None


class Postfix:
    """A Postfix relaying all mail to ``relayhost`` with ``settings`` (main.cf lines) and
    ``environment`` (name=value passed to its daemons)."""

    def __init__(
        self,
        folder: pathlib.Path,
        relayhost: str,
        settings: dict[str, str],
        environment: dict[str, str],
        files: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.config = folder / "etc"
        self.config.mkdir(parents=True)
        for name, text in (files or {}).items():
            (self.config / name).write_text(text)
        self.log = folder / "maillog"
        queue, data = folder / "queue", folder / "data"
        queue.mkdir()  # Postfix makes its subfolders, with their owners
        data.mkdir()
        shutil.chown(data, "postfix", "postfix")
        imported = " ".join(
            ["MAIL_CONFIG", "MAIL_DEBUG", "MAIL_LOGTAG", "TZ", "LANG=C"]
            + [f"{k}={v}" for k, v in environment.items()]
        )
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(queue),
            "data_directory": str(data),
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(folder),
            "myhostname": "ex02.contoso.com",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "relayhost": relayhost,
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
            "import_environment": imported,
            "smtp_tls_security_level": "none",
            "smtp_sasl_security_options": "noanonymous",
            "maximal_backoff_time": "10s",
            "minimal_backoff_time": "2s",
            "queue_run_delay": "2s",
            "shlib_directory": "/usr/lib/postfix",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "meta_directory": "/etc/postfix",
            **settings,
        }
        (self.config / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.config / "master.cf").write_text(MASTER_CF)
        self._postfix("start")
        self.running = True

    def _postfix(self, *args: str) -> str:
        done = subprocess.run(
            [POSTFIX, "-c", str(self.config), *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)}: {done.stderr}{done.stdout}")
        return done.stdout

    def postmap(self, name: str) -> None:
        subprocess.run(["postmap", str(self.config / name)], check=True, timeout=30)

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        subprocess.run(
            [SENDMAIL, "-C", str(self.config), "-f", sender, recipient],
            input=message,
            check=True,
            timeout=30,
        )

    def wait_log(self, text: str, timeout: float = 40) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if text in log:
                return log
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not in Postfix's log:\n{self.read_log()}")

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Stop the master and wait until it (and so its children) is gone."""
        if not self.running:
            return
        self.running = False
        pid_file = self.folder / "queue" / "pid" / "master.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        with contextlib.suppress(RuntimeError):
            self._postfix("stop")
        deadline = time.monotonic() + 15
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
