"""Names of the objects a server's reconcile writes (pure)."""

from __future__ import annotations

import re

import pytest
from smtpgate.connectors import admission
from smtpgate.operator import resources

DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("192.0.2.10", "ex01-receiver-192-0-2-10"),
        ("2001:db8::1", "ex01-receiver-20010db8000000000000000000000001"),
        ("2001:db8:1::", "ex01-receiver-20010db8000100000000000000000000"),
    ],
)
def test_binding_service_name_is_the_address_written_out(address: str, name: str) -> None:
    assert resources.binding_service_name("ex01", address) == name


def test_ipv6_addresses_that_slugged_alike_get_their_own_services() -> None:
    # Both once became "...-2001-db8-1" and overwrote each other.
    assert resources.binding_service_name("ex01", "2001:db8::1") != (
        resources.binding_service_name("ex01", "2001:db8:1::")
    )


@pytest.mark.parametrize(
    "address",
    ["2001:db8::1", "2001:db8:1::", "255.255.255.255", "fe80::ffff:ffff:ffff:ffff", "::"],
)
def test_longest_server_name_keeps_service_names_valid_unique_and_stable(address: str) -> None:
    server = "s" * admission.MAX_SERVER_NAME
    name = resources.binding_service_name(server, address)
    assert len(name) <= 63 and DNS_1035.fullmatch(name)
    assert name == resources.binding_service_name(server, address)
    others = {"2001:db8::1", "2001:db8:1::", "255.255.255.255", "255.255.255.254", "::", "::1"}
    names = {resources.binding_service_name(server, a) for a in others | {address}}
    assert len(names) == len(others | {address})


def test_long_default_connector_names_stay_distinct() -> None:
    # Two servers of the longest name that differ only at the end once got one default
    # connector name between them, and the second server's connector was never created.
    first, second = (
        "a" * (admission.MAX_SERVER_NAME - 1) + "1",
        "a" * (admission.MAX_SERVER_NAME - 1) + "2",
    )
    one = resources.slug(f"Default internal receive connector {first}")
    two = resources.slug(f"Default internal receive connector {second}")
    assert one != two and len(one) <= 63 and len(two) <= 63
    assert resources.slug("Default Frontend ex01") == "default-frontend-ex01"
