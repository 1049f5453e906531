"""Rules kept twice, once by the model and once by the apiserver at admission: the regular
expressions (written in the common subset of Python's ``re`` and RE2, and always matched
whole) and the CEL rules the CRDs carry, each beside the Python check that mirrors it.

tests/controlplane/test_admission.py holds the two to each other (the model half runs
without a control plane).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import certificates

# -- regular expressions ------------------------------------------------------------------

LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
HOSTNAME = rf"{LABEL}(\.{LABEL})*\.?"
DOMAIN = rf"(\*\.)?({LABEL}(\.{LABEL})+|localhost)\.?"
# A TransportServer's name: a DNS-1035 label short enough for "<name>-receiver" (see below).
SERVER_NAME = r"[a-z]([-a-z0-9]*[a-z0-9])?"
# RFC 5321 4.2: Reply-code [ SP textstring ], textstring = 1*(HT / SP / printable US-ASCII).
BANNER = r"220( [\t -~]+)?"
PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# The shapes of addresses; whether the digits make an address is checked by parsing (the
# model) and by isIP / isCIDR (CEL).
_V4 = r"[0-9]{1,3}(\.[0-9]{1,3}){3}"
_V6 = r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{1,43}"
BINDING = rf"({_V4}|\[{_V6}\]):{PORT}"
REMOTE_RANGE = (
    rf"{_V4}(-{_V4}|/([0-9]|[12][0-9]|3[0-2]))?"
    rf"|{_V6}(-{_V6}|/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))?"
)
SIZE = r"[ \t]*([0-9]{1,20})[ \t]*([BbKkMmGg]|[KkMmGg][Bb]|[KkMmGg][Ii])?[ \t]*"
# Free text that must not hide a typo at its edges: no leading or trailing white space.
TRIMMED = r"[^ \t\n\r].*[^ \t\n\r]|[^ \t\n\r]"
# Kubernetes object names and keys (Secrets).
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
SECRET_KEY = r"[-._a-zA-Z0-9]+"
SPOOL_PATH = r"(/[^/\x00]+)+"

# ``<I>issuer<S>subject``: each a distinguished name of TYPE=value parts, split by unescaped
# , + ; with a backslash escaping any one character. White space around parts is space or
# tab; every other character that Python's str.strip() would remove is refused outright, so
# that both engines agree on what is blank.
_STRIPPED = "\n\v\f\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CONTROL = "\x00-\x08\x0e-\x1b\x7f"
_NAMES = "|".join(sorted(certificates.SHORT_NAMES, key=len, reverse=True))
_TYPE = rf"[ \t]*((?i:{_NAMES})|[0-9]+(\.[0-9]+)+)[ \t]*"


def _dn(refused: str) -> str:
    """A distinguished name none of whose characters is in ``refused`` (a class body)."""
    bad = f"{_STRIPPED}{_CONTROL}{refused}"
    char = rf"(\\[^{bad}]|[^,+;\\{bad}])"
    value = rf"[ \t]*(\\[^{bad}]|[^,+;\\ \t{bad}]){char}*"
    return rf"{_TYPE}={value}([,+;]{_TYPE}={value})*"


# The issuer ends at the first "<S>", so it may not hold a "<" at all.
CERTIFICATE_NAME = rf"[ \t]*<I>{_dn('<')}<S>{_dn('')}"

# How long names and lists may be. "<server>-receiver" names the workload, its Services and
# ConfigMap; a StatefulSet's name also goes into the label controller-revision-hash
# ("<name>-<hash of up to 10 characters>", a label value of at most 63), so the workload's
# name may have 52 characters and the server's 52 - len("-receiver") = 43.
MAX_SERVER_NAME = 43
MAX_REMOTE_RANGES = 5_000
MAX_TRUSTED_PROXY_RANGES = 1_000
MAX_BINDINGS = 64


def matches(pattern: str, value: str) -> bool:
    """The whole of ``value`` matches ``pattern`` (as JSON schema and CEL match it)."""
    return re.fullmatch(pattern, value) is not None


def cel_string(text: str) -> str:
    """``text`` as a CEL string literal."""
    out = []
    for char in text:
        if char in "\\'":
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append(f"\\U{ord(char):08x}")
    return "'" + "".join(out) + "'"


def cel_matches(target: str, pattern: str) -> str:
    return f"{target}.matches({cel_string('^(' + pattern + ')$')})"


# -- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rule in both forms. ``check`` gets what ``self`` is in ``cel`` (a value, or the
    model instance for a rule on an object); ``field`` points at the field to blame."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str | None = None

    def crd(self) -> dict[str, str]:
        body = {"rule": self.cel, "message": self.message}
        if self.field:
            body["fieldPath"] = "." + self.field
        return body


class RuleError(ValueError):
    """A rule broken inside a model; ``field`` is relative to the model that checked it."""

    def __init__(self, field: str | int | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def schema(*rules: Rule) -> dict[str, Any]:
    """The JSON schema keys that carry ``rules``."""
    return {"x-kubernetes-validations": [r.crd() for r in rules]}


def enforce(rules: Iterable[Rule], value: Any) -> Any:
    """Raise RuleError for the first rule ``value`` breaks; else give ``value`` back."""
    for rule in rules:
        if not rule.check(value):
            raise RuleError(rule.field, rule.message)
    return value


def enforcer(*rules: Rule) -> Callable[[Any], Any]:
    return lambda value: enforce(rules, value)


def matching(pattern: str, message: str) -> Rule:
    """The rule that a whole string matches ``pattern``."""
    return Rule(cel_matches("self", pattern), message, lambda value: matches(pattern, value))


def ipv4_value(target: str) -> str:
    """CEL: the IPv4 address ``target`` (four dotted decimals) as an integer. split() is
    given its limit so that CEL's cost estimate knows the list has four parts."""
    octets = [f"int({target}.split('.', 4)[{i}])" for i in range(4)]
    return f"(({octets[0]} * 256 + {octets[1]}) * 256 + {octets[2]}) * 256 + {octets[3]}"
