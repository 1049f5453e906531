"""Remote IP ranges: parsing, normal form, and the most-specific match."""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smtpgate.connectors import config, ranges, specs
from smtpgate.connectors.enums import Usage


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("192.168.1.75", "192.168.1.75"),
        ("192.168.1.0-192.168.1.255", "192.168.1.0/24"),
        ("192.168.1.10-192.168.1.20", "192.168.1.10-192.168.1.20"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("0.0.0.0-255.255.255.255", "0.0.0.0/0"),
        ("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::/0"),
        ("2001:DB8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
    ],
)
def test_range_forms_normalise(text: str, normal: str) -> None:
    assert ranges.normalise(text) == normal


@pytest.mark.parametrize(
    "text",
    ["", "192.168.1", "10.0.0.300", "10.0.0.9-10.0.0.1", "10.0.0.1-::1", "10.0.0.0/33", "host"],
)
def test_malformed_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ranges.parse(text)


def _exchange01() -> config.ServerConfig:
    server = specs.TransportServerSpec(fqdn="exchange01.contoso.com")
    connectors = [
        ("Client Frontend Exchange01", ["0.0.0.0-255.255.255.255"]),
        ("Custom Connector A", ["192.168.1.0-192.168.1.255"]),
        ("Custom Connector B", ["192.168.1.75"]),
    ]
    compiled = config.compile_server(
        "exchange01",
        "mail",
        server,
        [
            (
                name,
                specs.ReceiveConnectorSpec(
                    server="exchange01",
                    usage=Usage.Custom,
                    bindings=["0.0.0.0:25"],
                    remote_ip_ranges=remote,
                ),
            )
            for name, remote in connectors
        ],
    )
    assert compiled.rejected == {}
    return compiled.config


@pytest.mark.parametrize(
    ("client", "connector"),
    [
        ("192.168.1.75", "Custom Connector B"),
        ("192.168.1.100", "Custom Connector A"),
        ("10.0.0.1", "Client Frontend Exchange01"),
    ],
)
def test_most_specific_range_wins_exchange01(client: str, connector: str) -> None:
    chosen = _exchange01().connector_for(
        ipaddress.ip_address("10.9.9.9"), 25, ipaddress.ip_address(client)
    )
    assert chosen is not None and chosen.name == connector


def test_no_connector_for_other_port_or_family() -> None:
    cfg = _exchange01()
    assert (
        cfg.connector_for(ipaddress.ip_address("10.9.9.9"), 587, ipaddress.ip_address("10.0.0.1"))
        is None
    )
    assert cfg.connector_for(ipaddress.ip_address("::1"), 25, ipaddress.ip_address("::1")) is None


def test_ipv4_mapped_client_on_dual_stack_socket_matches_ipv4_range() -> None:
    chosen = _exchange01().connector_for(
        ipaddress.ip_address("::ffff:10.9.9.9"), 25, ipaddress.ip_address("::ffff:192.168.1.75")
    )
    assert chosen is not None and chosen.name == "Custom Connector B"


def _ranges_for(version: int) -> st.SearchStrategy[ranges.IPRange]:
    top = (1 << (32 if version == 4 else 128)) - 1
    # Small universes make overlaps and containment common.
    base = st.integers(0, top - 300)

    def build(start: int, width: int, offset: int) -> ranges.IPRange:
        first = start - start % 256 + offset
        return ranges.IPRange(version, first, min(top, first + width))

    return st.builds(
        build, base.map(lambda b: b - b % 256), st.integers(0, 255), st.integers(0, 40)
    )


def _brute_force(
    candidates: list[tuple[int, list[ranges.IPRange]]], address: int, version: int
) -> set[int]:
    sizes = [
        (r.last - r.first + 1, key)
        for key, rs in candidates
        for r in rs
        if r.version == version and r.first <= address <= r.last
    ]
    if not sizes:
        return set()
    smallest = min(s for s, _ in sizes)
    return {key for s, key in sizes if s == smallest}


@pytest.mark.parametrize("version", [4, 6])
def test_most_specific_agrees_with_brute_force(version: int) -> None:
    @given(
        sets=st.lists(
            st.lists(_ranges_for(version), min_size=1, max_size=4), min_size=1, max_size=6
        ),
        probe=st.integers(0, 400),
    )
    def check(sets: list[list[ranges.IPRange]], probe: int) -> None:
        candidates = list(enumerate(sets))
        anchor = sets[0][0].first - sets[0][0].first % 256
        address_int = anchor + probe
        address = (ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)(
            min(address_int, (1 << (32 if version == 4 else 128)) - 1)
        )
        chosen = ranges.most_specific(candidates, address)
        expected = _brute_force(candidates, int(address), version)
        if not expected:
            assert chosen is None
        else:
            assert chosen in expected
            # Ties go to the earliest candidate.
            assert chosen == min(expected)

    check()


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_cidr_normal_form_round_trips(value: int, bits: int) -> None:
    network = ipaddress.ip_network((value, bits), strict=False)
    parsed = ranges.parse(str(network))
    assert ranges.parse(str(parsed)) == parsed
    assert str(parsed) == (str(network.network_address) if bits == 32 else str(network))


def _clashes_brute_force(earlier: list[ranges.IPRange], query: ranges.IPRange) -> bool:
    return any(r == query or not r.nested_or_disjoint(query) for r in earlier)


@pytest.mark.parametrize("version", [4, 6])
def test_clash_index_agrees_with_pairwise_rule(version: int) -> None:
    @given(
        earlier=st.lists(_ranges_for(version), min_size=1, max_size=12),
        queries=st.lists(_ranges_for(version), min_size=1, max_size=6),
    )
    def check(earlier: list[ranges.IPRange], queries: list[ranges.IPRange]) -> None:
        # One anchor block of 256 addresses, so that most ranges meet.
        base = earlier[0].first - earlier[0].first % 256
        shift = [
            ranges.IPRange(version, base + r.first % 256, base + r.first % 256 + r.size - 1)
            for r in earlier + queries
        ]
        earlier, queries = shift[: len(earlier)], shift[len(earlier) :]
        index = ranges.Clash(earlier)
        for query in queries:
            assert index.clashes(query) == _clashes_brute_force(earlier, query)
            first = index.first_clash(query)
            expected = next(
                (r for r in earlier if r == query or not r.nested_or_disjoint(query)), None
            )
            assert first == expected

    check()


def _wide_connector(cidrs: list[str]) -> specs.ReceiveConnectorSpec:
    return specs.ReceiveConnectorSpec(
        server="ex01",
        usage=Usage.Custom,
        bindings=["0.0.0.0:25"],
        remote_ip_ranges=cidrs,
    )


def test_two_connectors_with_the_most_ranges_compile_quickly() -> None:
    most = specs.admission.MAX_REMOTE_RANGES
    ten, eleven = int(ipaddress.IPv4Address("10.0.0.0")), int(ipaddress.IPv4Address("11.0.0.0"))
    first = [f"{ipaddress.IPv4Address(ten + 4 * i)}/30" for i in range(most)]
    # Each range of the second lies inside one of the first (allowed), but its last one
    # repeats the first connector's last range (a conflict found at the end of the list).
    nested = [f"{ipaddress.IPv4Address(ten + 4 * i)}/31" for i in range(most - 1)]
    cases = {
        "disjoint": [f"{ipaddress.IPv4Address(eleven + 4 * i)}/30" for i in range(most)],
        "nested, last repeated": [*nested, first[-1]],
    }
    server = specs.TransportServerSpec(fqdn="exchange01.contoso.com")
    for label, second in cases.items():
        started = time.perf_counter()
        compiled = config.compile_server(
            "ex01",
            "mail",
            server,
            [("a", _wide_connector(first)), ("b", _wide_connector(second))],
        )
        elapsed = time.perf_counter() - started
        assert elapsed < 2, f"{label}: {elapsed:.2f} s"
        if label == "disjoint":
            assert compiled.rejected == {}
        else:
            assert compiled.rejected["b"].field == f"spec.remoteIPRanges[{most - 1}]"
            assert "already used by connector 'a'" in compiled.rejected["b"].message


@pytest.mark.parametrize(
    ("earlier", "later", "words"),
    [
        (["10.0.0.0/24"], ["10.0.0.0/24"], "already used"),
        (["10.0.0.0-10.0.0.99"], ["10.0.0.50-10.0.0.150"], "without one containing the other"),
        (["10.0.0.50-10.0.0.150"], ["10.0.0.0-10.0.0.99"], "without one containing the other"),
        (["10.0.0.0/24"], ["10.0.0.0/25"], None),
        (["10.0.0.0/25"], ["10.0.0.0/24"], None),
        (["10.0.0.0-10.0.0.99"], ["10.0.0.100-10.0.0.199"], None),
        (["2001:db8::/32"], ["2001:db8::/32"], "already used"),
        (["10.0.0.0/24"], ["::/0"], None),
    ],
)
def test_ranges_on_one_binding_nest_or_stay_apart(
    earlier: list[str], later: list[str], words: str | None
) -> None:
    compiled = config.compile_server(
        "ex01",
        "mail",
        specs.TransportServerSpec(fqdn="exchange01.contoso.com"),
        [("a", _wide_connector(earlier)), ("b", _wide_connector(later))],
    )
    if words is None:
        assert compiled.rejected == {}
    else:
        assert words in compiled.rejected["b"].message
