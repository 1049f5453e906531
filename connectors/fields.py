"""The strings and sizes of the specs: each a type that the model and the CRD hold to the
same rules (see ``admission``)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    WithJsonSchema,
)
from pydantic_core import core_schema

from . import admission, bindings, certificates, ranges
from .admission import Rule
from .errors import SpecError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
_UNITS = {
    "": 1,
    "b": 1,
    "kb": KIB,
    "ki": KIB,
    "k": KIB,
    "mb": MIB,
    "mi": MIB,
    "m": MIB,
    "gb": GIB,
    "gi": GIB,
    "g": GIB,
}


def parse_size(value: Any) -> int:
    """Bytes from an integer or a size such as ``36MB`` (Exchange) or ``36Mi`` (Kubernetes);
    both mean binary multiples, as Exchange's do."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as 36MB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size may not be negative")
        return value
    if isinstance(value, str) and (match := re.fullmatch(admission.SIZE, value)):
        return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    raise ValueError(
        f"{value!r} is not a size (use bytes, or a number with KB, MB, GB, Ki, Mi, Gi)"
    )


class Text:
    """Annotation of a string that the model and the CRD both hold to ``rules`` (CEL),
    ``pattern`` (a JSON schema pattern, with the model's message) and ``max_length``;
    ``check`` parses it further in the model alone, after the rules (raising ValueError)."""

    def __init__(
        self,
        *rules: Rule,
        max_length: int | None = None,
        pattern: tuple[str, str] | None = None,
        check: Callable[[str], object] | None = None,
    ) -> None:
        self.rules, self.max_length, self.pattern, self.check = rules, max_length, pattern, check

    def validate(self, value: str) -> str:
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError(f"may have at most {self.max_length} characters")
        if self.pattern is not None and not admission.matches(self.pattern[0], value):
            raise ValueError(self.pattern[1])
        admission.enforce(self.rules, value)
        if self.check is not None:
            self.check(value)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_after_validator_function(self.validate, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        json: dict[str, Any] = {"type": "string"}
        if self.max_length is not None:
            json["maxLength"] = self.max_length
        if self.pattern is not None:
            json["pattern"] = f"^({self.pattern[0]})$"
        if self.rules:
            json.update(admission.schema(*self.rules))
        return json


def _address(text: str) -> ranges.IPAddress:
    """An address as the CRD's isIP() takes it: no zone, no IPv4-mapped IPv6."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and (
        address.ipv4_mapped is not None or address.scope_id
    ):
        raise ValueError(f"{text!r} is an IPv4-mapped or scoped IPv6 address")
    return address


def _is(parse: Callable[[str], object]) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            parse(text)
        except ValueError:
            return False
        return True

    return check


def _binding_host(text: str) -> str:
    return text[1 : text.index("]")] if text.startswith("[") else text.split(":")[0]


def _cel_binding_host(target: str) -> str:
    return (
        f"({target}.startsWith('[') ? {target}.substring(1, {target}.indexOf(']')) "
        f": {target}.split(':')[0])"
    )


def _range_addresses(text: str) -> None:
    if "/" in text:
        _address(text.partition("/")[0])
        ipaddress.ip_network(text, strict=False)
    else:
        for part in text.split("-"):
            _address(part)


def _ipv4_in_order(text: str) -> bool:
    if "-" not in text or ":" in text:
        return True
    low, high = (ipaddress.IPv4Address(part) for part in text.split("-"))
    return low <= high


BindingText = Annotated[
    str,
    Text(
        Rule(
            f"isIP({_cel_binding_host('self')})",
            "must name a valid IP address (IPv4-mapped IPv6 addresses and zones are not allowed)",
            lambda text: _is(_address)(_binding_host(text)),
        ),
        max_length=56,
        pattern=(admission.BINDING, "must look like IPv4:port or [IPv6]:port, port 1 to 65535"),
        check=bindings.parse,
    ),
]
UNIQUE_BINDINGS = Rule(
    "self.all(x, self.exists_one(y, y.substring(y.lastIndexOf(':')) == "
    f"x.substring(x.lastIndexOf(':')) && ip({_cel_binding_host('y')}) == "
    f"ip({_cel_binding_host('x')})))",
    "may not list one binding twice",
    lambda texts: len({bindings.parse(t) for t in texts}) == len(texts),
)


def _unique_bindings(texts: list[str]) -> list[str]:
    seen: set[bindings.Binding] = set()
    for index, text in enumerate(texts):
        if bindings.parse(text) in seen:
            raise admission.RuleError(index, UNIQUE_BINDINGS.message)
        seen.add(bindings.parse(text))
    return texts


BindingList = Annotated[list[BindingText], AfterValidator(_unique_bindings)]
# Where a range's "-" is, without split(): CEL's cost estimate takes every list as long as
# its string, which 10,000 ranges could not afford.
_LOW, _HIGH = "self.substring(0, self.indexOf('-'))", "self.substring(self.indexOf('-') + 1)"
RangeText = Annotated[
    str,
    Text(
        Rule(
            f"self.contains('/') ? isCIDR(self) : self.contains('-') ? "
            f"isIP({_LOW}) && isIP({_HIGH}) : isIP(self)",
            "must hold valid IP addresses (IPv4-mapped IPv6 addresses and zones are not allowed)",
            _is(_range_addresses),
        ),
        Rule(
            "!self.contains('-') || self.contains(':') || "
            f"{admission.ipv4_value(_LOW)} <= {admission.ipv4_value(_HIGH)}",
            "starts after it ends",
            _ipv4_in_order,
        ),
        max_length=100,
        pattern=(
            admission.REMOTE_RANGE,
            "must be an IP address, a range such as 192.0.2.1-192.0.2.99, or a CIDR block "
            "(without brackets or spaces)",
        ),
        check=ranges.parse,
    ),
]
_HOSTNAME_RULE = Rule(
    f"size(self) <= (self.endsWith('.') ? 254 : 253) && "
    f"{admission.cel_matches('self', admission.HOSTNAME)}",
    "must be a fully qualified domain name: labels of letters, digits and hyphens, at "
    "most 63 characters each and 253 in all",
    lambda v: len(v.removesuffix(".")) <= 253 and admission.matches(admission.HOSTNAME, v),
)
Hostname = Annotated[str, Text(_HOSTNAME_RULE, max_length=254)]
RelayHost = Annotated[
    str,
    Text(
        Rule(
            f"isIP(self) || ({_HOSTNAME_RULE.cel})",
            "must be a host name or an IP address (without brackets)",
            lambda v: _is(_address)(v) or _HOSTNAME_RULE.check(v),
        ),
        max_length=254,
    ),
]
CertificateNameText = Annotated[
    str,
    Text(
        admission.matching(
            admission.CERTIFICATE_NAME,
            "must have the form <I>issuer<S>subject, each an RFC 4514 name such as "
            "CN=Contoso CA,O=Contoso",
        ),
        max_length=1024,
        check=certificates.parse_name,
    ),
]
Banner = Annotated[
    str,
    Text(
        admission.matching(
            admission.BANNER,
            "must be 220, a space and text of printable US-ASCII characters, spaces and tabs "
            "(RFC 5321 reply text; no line breaks)",
        ),
        max_length=510,
    ),
]


def server_name_cel(target: str) -> str:
    """CEL: ``target`` may name a TransportServer."""
    return f"size({target}) <= {admission.MAX_SERVER_NAME} && " + admission.cel_matches(
        target, admission.SERVER_NAME
    )


SERVER_NAME_RULE = Rule(
    server_name_cel("self"),
    f"must be a TransportServer name: lower-case letters, digits and hyphens, starting "
    f"with a letter, at most {admission.MAX_SERVER_NAME} characters (so that "
    "<name>-receiver names its workload and Services)",
    lambda v: len(v) <= admission.MAX_SERVER_NAME and admission.matches(admission.SERVER_NAME, v),
)
ServerName = Annotated[str, Text(SERVER_NAME_RULE, max_length=253)]
Trimmed = Annotated[str, Text(pattern=(admission.TRIMMED, "may not start or end with white space"))]
ImageName = Annotated[
    str,
    Text(
        max_length=1024,
        pattern=(r"[^ \t\n\r\f\v]+", "must be an image reference, without white space"),
    ),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,
            "pattern": f"^({admission.SIZE})$",
        }
    ),
]


QUANTITY = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?"


def _quantity(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a Kubernetes quantity such as 500m, 256Mi or 2")
    if isinstance(value, str) and not re.fullmatch(QUANTITY, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (such as 500m, 256Mi or 2)")
    return value


Quantity = Annotated[
    str | int,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": f"^{QUANTITY}$",
        }
    ),
]
# A Kubernetes API object (a toleration, an affinity, a topology spread constraint) passed to
# the pod template as written; the API server checks it when the workload is applied.
KubeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
LabelMap = Annotated[
    dict[str, Annotated[str, Text(max_length=63)]],
    WithJsonSchema({"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}}),
]


def check_server_name(name: str) -> None:
    """Raise SpecError when a TransportServer may not have this name (the CRD's root rule)."""
    if not SERVER_NAME_RULE.check(name):
        raise SpecError("metadata.name", SERVER_NAME_RULE.message)
