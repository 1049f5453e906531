"""The user database for BasicAuth: an htpasswd-style file of bcrypt hashes (the
ingress-nginx convention), mounted from a Secret. A line may name, after the hash, the
sender addresses the user may send as (Postfix's smtpd_sender_login_maps, Exchange's
send-as): ``name:hash:alice@contoso.com,a.smith@contoso.com,@fabrikam.com`` (``@domain``:
every address of the domain). A user whose name is an address may send as that address."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import pathlib
from dataclasses import dataclass, field

import bcrypt

from . import workers

log = logging.getLogger(__name__)

# Verifying an unknown user against this hash takes as long as verifying a known one, so
# the reply time does not tell which user names exist.
_DUMMY_HASH = bcrypt.hashpw(b"smtpgate-no-such-user", bcrypt.gensalt(rounds=10))


@dataclass(frozen=True)
class UserDatabase:
    """User name → bcrypt hash, and → the addresses the user may send as (lowercase)."""

    hashes: dict[str, bytes]
    addresses: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> UserDatabase:
        hashes: dict[str, bytes] = {}
        owned: dict[str, frozenset[str]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, rest = line.partition(":")
            hashed, _, senders = rest.partition(":")
            if not sep or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                log.warning("user database line %d is not name:bcrypt-hash; skipped", number)
                continue
            hashes[name] = hashed.encode()
            listed = {a.strip().lower() for a in senders.split(",") if "@" in a}
            if "@" in name:
                listed.add(name.lower())
            if listed:
                owned[name] = frozenset(listed)
        return cls(hashes, owned)

    @classmethod
    def load(cls, path: str | pathlib.Path) -> UserDatabase:
        return cls.parse(pathlib.Path(path).read_text())

    def may_send_as(self, name: str, address: str) -> bool:
        """Whether user ``name`` owns ``address`` (``local@domain``)."""
        owned = self.addresses.get(name, frozenset())
        address = address.lower()
        return address in owned or "@" + address.rpartition("@")[2] in owned

    def check(self, name: str, password: bytes) -> bool:
        hashed = self.hashes.get(name)
        if hashed is None:
            # Spend the same effort, with the cost factor of the database's hashes.
            bcrypt.checkpw(password, self._equal_cost_dummy())
            return False
        try:
            return bcrypt.checkpw(password, hashed)
        except ValueError:
            return False

    def _equal_cost_dummy(self) -> bytes:
        sample = next(iter(self.hashes.values()), None)
        if sample is None:
            return _DUMMY_HASH
        cost = sample.split(b"$")[2]
        return _dummy_for_cost(cost)

    async def verify(self, name: str, password: bytes) -> bool:
        """``check`` off the event loop (bcrypt is deliberately slow), on threads that
        check passwords and do nothing else: a relay next hop that hangs cannot hold
        them. One per core; more logons at once wait their turn."""
        return await asyncio.get_running_loop().run_in_executor(
            _checkers(), self.check, name, password
        )


@functools.cache
def _checkers() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(
        workers.cpu_count(), "bcrypt", initializer=workers.free_thread
    )


_DUMMIES: dict[bytes, bytes] = {}


def _dummy_for_cost(cost: bytes) -> bytes:
    if cost not in _DUMMIES:
        _DUMMIES[cost] = bcrypt.hashpw(b"smtpgate-no-such-user", bcrypt.gensalt(rounds=int(cost)))
    return _DUMMIES[cost]
