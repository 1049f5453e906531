"""A real MIT Kerberos KDC on loopback with throw-away realms, for the GSSAPI tests.

Debian's krb5-kdc and krb5-admin-server: ``kdb5_util`` makes each realm's database,
``kadmin.local`` its principals and keytabs, ``krb5kdc`` serves them on a free port. Nothing
outside the fixture's folder is touched: the tools find their files through KRB5_CONFIG and
KRB5_KDC_PROFILE, which the fixture sets for this process (and so for the receiver it runs)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping

REALM = "SMTPGATE.TEST"
OTHER_REALM = "OTHER.TEST"  # a realm the receiver does not trust
TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit", "kdestroy")
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin")


def tool(name: str) -> str | None:
    """Where a Kerberos tool is (Debian puts the KDC's in /usr/sbin, often not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN:
        candidate = pathlib.Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


def missing() -> list[str]:
    return [name for name in TOOLS if tool(name) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Kdc:
    """Two realms on one ``krb5kdc`` (REALM, which the receiver trusts, and OTHER_REALM),
    with their files under ``folder``. ``env`` is what a client or server needs to use it."""

    def __init__(self, folder: pathlib.Path, clockskew: int = 1) -> None:
        self.folder = folder
        self.port = _free_port()
        self.krb5_conf = folder / "krb5.conf"
        self.kdc_conf = folder / "kdc.conf"
        self.rcache = folder / "rcache"
        self.rcache.mkdir()
        realms_kdc = "\n".join(
            f"  {realm} = {{\n"
            f"    database_name = {folder / realm / 'principal'}\n"
            f"    key_stash_file = {folder / realm / 'stash'}\n"
            f"    acl_file = {folder / realm / 'kadm5.acl'}\n"
            f"    kdc_ports = {self.port}\n"
            f"    kdc_tcp_ports = {self.port}\n"
            "    max_life = 10h\n"
            "    max_renewable_life = 0\n"
            "    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n"
            "  }"
            for realm in (REALM, OTHER_REALM)
        )
        self.kdc_conf.write_text(
            f"[kdcdefaults]\n  kdc_ports = {self.port}\n  kdc_tcp_ports = {self.port}\n"
            f"[realms]\n{realms_kdc}\n"
            f"[logging]\n  kdc = FILE:{folder / 'kdc.log'}\n"
        )
        realms = "\n".join(
            f"  {realm} = {{\n    kdc = 127.0.0.1:{self.port}\n  }}"
            for realm in (REALM, OTHER_REALM)
        )
        # clockskew 1: an expired ticket is refused a second after it expires, not five
        # minutes after (the tests wait for one to expire).
        self.krb5_conf.write_text(
            "[libdefaults]\n"
            f"  default_realm = {REALM}\n"
            "  dns_lookup_kdc = false\n"
            "  dns_lookup_realm = false\n"
            "  rdns = false\n"
            "  dns_canonicalize_hostname = false\n"
            "  udp_preference_limit = 1\n"
            f"  clockskew = {clockskew}\n"
            "  forwardable = false\n"
            f"[realms]\n{realms}\n"
            "[domain_realm]\n"
            f"  localhost = {REALM}\n"
            f"  mail.contoso.com = {REALM}\n"
            f"  .other.test = {OTHER_REALM}\n"
            # OTHER_REALM trusts REALM directly (Realm makes the cross-realm key).
            "[capaths]\n"
            f"  {OTHER_REALM} = {{\n    {REALM} = .\n  }}\n"
            f"  {REALM} = {{\n    {OTHER_REALM} = .\n  }}\n"
        )
        self.env: dict[str, str] = {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            "KRB5RCACHEDIR": str(self.rcache),
            "KRB5_TRACE": str(folder / "trace.log"),
        }
        for realm in (REALM, OTHER_REALM):
            (folder / realm).mkdir()
            (folder / realm / "kadm5.acl").write_text("")
            self._run("kdb5_util", "-r", realm, "create", "-s", "-P", "master-" + realm.lower())
        self.process = subprocess.Popen(
            [tool("krb5kdc") or "krb5kdc", "-n", "-r", REALM, "-r", OTHER_REALM],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_listening()

    def _run(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> str:
        done = subprocess.run(
            [tool(name) or name, *args],
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"krb5kdc exited: {self.process.stderr and self.process.stderr.read()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("krb5kdc did not listen")

    def kadmin(self, query: str, realm: str = REALM) -> str:
        return self._run("kadmin.local", "-r", realm, "-q", query)

    def add_user(self, name: str, password: str, realm: str = REALM, maxlife: str = "") -> str:
        life = f' -maxlife "{maxlife}"' if maxlife else ""
        self.kadmin(f"addprinc{life} -pw {password} {name}", realm)
        return f"{name}@{realm}"

    def add_service(self, principal: str, keytab: pathlib.Path, realm: str = REALM) -> str:
        """A service principal with a random key, exported to ``keytab`` (appended)."""
        self.kadmin(f"addprinc -randkey {principal}", realm)
        self.kadmin(f"ktadd -k {keytab} {principal}", realm)
        return f"{principal}@{realm}"

    def kinit(
        self, principal: str, password: str, ccache: pathlib.Path, lifetime: str = ""
    ) -> dict[str, str]:
        """A ticket-granting ticket for ``principal`` in ``ccache``; the env to use it with."""
        env = {**self.env, "KRB5CCNAME": f"FILE:{ccache}"}
        args = ["-l", lifetime] if lifetime else []
        done = subprocess.run(
            [tool("kinit") or "kinit", *args, principal],
            input=password + "\n",
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kinit {principal}: {done.stderr}")
        return env

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


class Realm:
    """The principals the tests use, made in a started ``Kdc``: users (alice and bob, whose
    passwords are also their NT hashes' source; ``brief``, whose tickets live 3 seconds),
    the receiver's keytab (its smtp/ and SMTP/ principals, and an HTTP/ one the receiver
    must not take), another server of the organisation (ex02, with a keytab of its own to
    authenticate with), and a user and an smtp/ principal of OTHER_REALM, which trusts REALM
    (its users get tickets for REALM's services)."""

    PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}

    def __init__(self, kdc: Kdc, folder: pathlib.Path) -> None:
        self.kdc = kdc
        self.folder = folder
        self.keytab = folder / "receiver.keytab"
        self.server_keytab = folder / "ex02.keytab"
        for name, password in self.PASSWORDS.items():
            kdc.add_user(name, password)
        kdc.add_user("brief", "brief-secret", maxlife="3 seconds")
        kdc.add_user("eve", "eve-secret", realm=OTHER_REALM)
        # A cross-realm trust: OTHER_REALM's users can get tickets for REALM's services.
        for realm in (REALM, OTHER_REALM):
            kdc.kadmin(f"addprinc -pw cross-realm-trust krbtgt/{REALM}@{OTHER_REALM}", realm)
        self.service_principals = tuple(
            kdc.add_service(p, self.keytab)
            for p in ("smtp/mail.contoso.com", "SMTP/mail.contoso.com", "smtp/localhost")
        )
        self.foreign_service = kdc.add_service("HTTP/mail.contoso.com", self.keytab)
        self.other_realm_service = kdc.add_service(
            "smtp/mail.contoso.com", folder / "other.keytab", realm=OTHER_REALM
        )
        self.server_principal = kdc.add_service("smtp/ex02.contoso.com", self.server_keytab)
        self._count = 0

    def ccache(
        self, principal: str, password: str | None = None, lifetime: str = ""
    ) -> dict[str, str]:
        """An env whose credential cache holds a TGT for ``principal`` (from the server keytab
        when no password is given)."""
        self._count += 1
        cache = self.folder / f"cc{self._count}"
        if password is not None:
            return self.kdc.kinit(principal, password, cache, lifetime)
        env = {**self.kdc.env, "KRB5CCNAME": f"FILE:{cache}"}
        subprocess.run(
            [tool("kinit") or "kinit", "-k", "-t", str(self.server_keytab), principal],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
            timeout=30,
        )
        return env
