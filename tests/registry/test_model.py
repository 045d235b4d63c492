"""Names, hosts, ports and node ids: what the registry accepts and how it spells them."""

from __future__ import annotations

import pytest

from maxine_registry.errors import InvalidInput
from maxine_registry.model import (
    NodeRef,
    format_address,
    normalize_host,
    parse_node_ref,
    validate_port,
    validate_service_name,
)


@pytest.mark.parametrize("name", ["a", "orders", "orders-v2", "orders.payments", "svc_1", "A" * 128])
def test_service_names_that_are_accepted(name: str) -> None:
    assert validate_service_name(name) == name


@pytest.mark.parametrize("name", ["", " ", "has space", "-leading", "a:b", "a/b", "A" * 129, None, 7, ["x"]])
def test_service_names_that_are_refused(name: object) -> None:
    with pytest.raises(InvalidInput):
        validate_service_name(name)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("localhost", "localhost"),
        ("Orders.Example.COM.", "orders.example.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("FE80::1", "fe80::1"),
    ],
)
def test_hosts_are_stored_in_one_canonical_spelling(given: str, canonical: str) -> None:
    assert normalize_host(given) == canonical


@pytest.mark.parametrize(
    "host", ["", "has space", "bad..dots", "-x.com", "a" * 64 + ".com", "x" * 254, 5, None, "1.2.3.4:80"]
)
def test_hosts_that_are_refused(host: object) -> None:
    with pytest.raises(InvalidInput):
        normalize_host(host)


@pytest.mark.parametrize(("given", "port"), [(1, 1), (65535, 65535), ("8080", 8080)])
def test_ports_that_are_accepted(given: object, port: int) -> None:
    assert validate_port(given) == port


@pytest.mark.parametrize("port", [0, 70000, -1, "abc", "80 ", " 80", 8.5, True, None, "٣"])
def test_ports_that_are_refused(port: object) -> None:
    with pytest.raises(InvalidInput):
        validate_port(port)


def test_ipv6_addresses_are_printed_with_brackets() -> None:
    assert format_address("::1", 9000) == "[::1]:9000"
    assert format_address("10.0.0.1", 80) == "10.0.0.1:80"


@pytest.mark.parametrize(
    ("node_id", "parsed"),
    [
        ("orders:10.0.0.1:80", NodeRef("orders", "10.0.0.1", 80)),
        ("orders:::1:9000", NodeRef("orders", "::1", 9000)),
        ("orders:[::1]:9000", NodeRef("orders", "::1", 9000)),
        ("orders:fe80::1:2:9000", NodeRef("orders", "fe80::1:2", 9000)),
        ("localhost:3000", NodeRef(None, "localhost", 3000)),
        ("[::1]:9000", NodeRef(None, "::1", 9000)),
    ],
)
def test_node_ids_are_parsed_from_the_right(node_id: str, parsed: NodeRef) -> None:
    assert parse_node_ref(node_id) == parsed


@pytest.mark.parametrize("node_id", ["", "nocolon", ":80", "svc:host:notaport", "svc:host:0", 42, None, "x" * 500])
def test_malformed_node_ids_are_refused(node_id: object) -> None:
    with pytest.raises(InvalidInput):
        parse_node_ref(node_id)


@pytest.mark.parametrize("host", ["256.256.256.256", "1.2.3.4.5", "999.1.1.1", "10.0.0"])
def test_numbers_that_are_not_ip_addresses_are_not_host_names_either(host: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_host(host)
