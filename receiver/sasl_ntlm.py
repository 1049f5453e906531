"""AUTH NTLM as Exchange speaks it ([MS-SMTPNTLM]): ``AUTH NTLM`` → ``334 NTLM
supported`` → NEGOTIATE → CHALLENGE → AUTHENTICATE → 235 or 535, on pyspnego's NTLM
acceptor (no crypto of our own).

The users' NT hashes come from a file of ``name:hash`` lines (32 hex digits), never
passwords; pyspnego reads its own format from the file NTLM_USER_FILE names, so each is
turned into that format once per change, in a private file, with an LM hash nobody can
use: the acceptor runs at LM compatibility level 5 (NTLMv2 only, no LM, no NTLMv1). The
environment is the process's, so the two steps that read it hold a lock; the variables
stay set between them (``_with_store``).

An unknown user is refused after as long as a known one with a wrong hash: every
AUTHENTICATE takes ``FLOOR`` seconds at least (pyspnego finds no entry quicker than it
checks one)."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import pathlib
import re
import shutil
import tempfile
import threading
import time
from typing import Any

import spnego
from smtpgate.connectors.kerberos import NtlmConfig
from smtpgate.connectors.permissions import authenticated_user

from .sasl import Failed, Identity
from .sasl_gssapi import _off_loop

log = logging.getLogger(__name__)

FLOOR = 0.05  # seconds every AUTHENTICATE takes, whoever it names
_HASH_LINE = re.compile(r"^([^:\s\\]+):([0-9A-Fa-f]{32})$")
_LOCK = threading.Lock()
_CONVERTING = threading.Lock()
# hashes file -> (its stamp, pyspnego's file, the users' names by their upper case)
_CONVERTED: dict[str, tuple[tuple[int, int], str, dict[str, str]]] = {}
_FOLDER: list[str] = []


def parse_hashes(text: str) -> dict[str, str]:
    """``name:hash`` lines → name → hash (upper-case hex); other lines are skipped."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _HASH_LINE.match(line)
        if match is None:
            log.warning("NTLM hash file line %d is not name:32-hex-digit NT hash; skipped", number)
            continue
        found[match.group(1)] = match.group(2).upper()
    return found


def _store(config: NtlmConfig) -> tuple[str, dict[str, str]]:
    """pyspnego's file for ``config``'s hashes (remade when the source changes), and the
    users' names by their upper case (NTLM matches names without regard to case; the user
    is the name as the hash file writes it, the first such line being the one matched)."""
    with _CONVERTING:
        return _convert(config)


def _convert(config: NtlmConfig) -> tuple[str, dict[str, str]]:
    source = pathlib.Path(config.hashes_file)
    stat = source.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    known = _CONVERTED.get(config.hashes_file)
    if known is not None and known[0] == stamp:
        return known[1], known[2]
    if not _FOLDER:
        _FOLDER.append(tempfile.mkdtemp(prefix="smtpgate-ntlm-"))  # 0700, the process's own
        atexit.register(shutil.rmtree, _FOLDER[0], True)
    lines = []
    users: dict[str, str] = {}
    for name, nt in parse_hashes(source.read_text()).items():
        users.setdefault(name.upper(), name)
        names = [name] + ([f"{config.domain}\\{name}"] if config.domain else [])
        lines += [f"{n}:0:{'0' * 32}:{nt}:[U]:LCT-00000000" for n in names]
    fd, path = tempfile.mkstemp(dir=_FOLDER[0], suffix=".smbpasswd")
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    if known is not None:
        pathlib.Path(known[1]).unlink(missing_ok=True)
    _CONVERTED[config.hashes_file] = (stamp, path, users)
    return path, users


def _with_store(store: str, function: Any, *args: Any) -> Any:
    """``function`` with pyspnego's settings in the environment. They are set, not put
    back: C libraries on other threads (MIT Kerberos) read the environment unlocked, and
    adding or removing a variable moves glibc's array under them; a value replaced is a
    pointer swapped."""
    with _LOCK:
        for key, value in (("NTLM_USER_FILE", store), ("LM_COMPAT_LEVEL", "5")):
            if os.environ.get(key) != value:
                os.environ[key] = value
        return function(*args)


class NtlmExchange:
    """One [MS-SMTPNTLM] exchange."""

    opening = b"NTLM supported"
    opening_is_text = True

    def __init__(self, config: NtlmConfig) -> None:
        self.config = config
        self.context: Any = None
        self._identity: Identity | None = None

    def _negotiate(self, token: bytes) -> bytes:
        store, _ = _store(self.config)
        self.context = _with_store(
            store, spnego.server, "unspecified", "host", None, spnego.ContextReq.default, "ntlm"
        )
        challenge = _with_store(store, self.context.step, token)
        if not challenge:
            raise Failed(detail="no NTLM challenge")
        return bytes(challenge)

    def _authenticate(self, token: bytes) -> str:
        """The user the AUTHENTICATE proved, named as the hash file names it."""
        store, names = _store(self.config)
        _with_store(store, self.context.step, token)
        if not self.context.complete:
            raise Failed(detail="NTLM did not complete")
        given = str(self.context.client_principal).rpartition("\\")[2]
        name = names.get(given.upper())
        if name is None:
            raise Failed(detail=f"NTLM user {given} is not in the hash file")
        return name

    async def step(self, token: bytes) -> bytes | None:
        if self.context is None:
            try:
                return await _off_loop(self._negotiate, token)
            except Failed:
                raise
            except Exception as error:  # pyspnego raises many kinds (KeyError too) on garbage
                raise Failed(detail=f"NTLM negotiate: {type(error).__name__}: {error}") from None
        started = time.monotonic()
        try:
            name = await _off_loop(self._authenticate, token)
        except Failed:
            await self._floor(started)
            raise
        except Exception as error:  # pyspnego raises many kinds on a bad message
            await self._floor(started)
            raise Failed(detail=f"NTLM authenticate: {type(error).__name__}: {error}") from None
        await self._floor(started)
        self._identity = Identity(name, authenticated_user(name))
        return None

    @staticmethod
    async def _floor(started: float) -> None:
        await asyncio.sleep(max(0.0, FLOOR - (time.monotonic() - started)))

    def identity(self) -> Identity:
        assert self._identity is not None
        return self._identity
