"""Kubernetes names for any Maxine service or version: valid, stable, and never shared by two."""

from __future__ import annotations

import re

import pytest

from maxine_registry.mesh.names import dns_label, join_name, label_value, service_account, spiffe_principal

DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
AWKWARD = [
    "Orders_V2.svc",
    "orders_v2.svc",
    "orders-v2-svc",
    "ORDERS-V2-SVC",
    "a" * 128,
    "a" * 127 + "b",
    "9lives",
    "x",
]


@pytest.mark.parametrize("name", ["orders", "orders-v2", "a" * 63, "x"])
def test_a_name_that_is_already_valid_is_kept(name: str) -> None:
    assert dns_label(name) == name


@pytest.mark.parametrize("name", AWKWARD)
def test_every_service_name_becomes_a_dns_label(name: str) -> None:
    label = dns_label(name)

    assert DNS_1035_LABEL.fullmatch(label) and len(label) <= 63
    assert dns_label(name) == label  # the same every time


def test_names_that_sanitise_alike_stay_apart() -> None:
    labels = [dns_label(name) for name in AWKWARD]

    assert len(set(labels)) == len(AWKWARD)


def test_a_long_name_keeps_a_readable_start() -> None:
    assert dns_label("Payments_Service" + "x" * 100).startswith("payments-service")


def test_joined_names_stay_within_a_label_and_apart() -> None:
    long_a, long_b = dns_label("a" * 128), dns_label("a" * 127 + "b")

    joined = {join_name(base, version) for base in (long_a, long_b) for version in ("v1", "v2")}

    assert len(joined) == 4
    assert all(DNS_1035_LABEL.fullmatch(name) and len(name) <= 63 for name in joined)


@pytest.mark.parametrize(
    ("version", "kept"), [("v1", True), ("V1.2.3", True), ("1.0_rc1", True), ("1.0+build/7", False), ("v" * 64, False)]
)
def test_versions_become_label_values(version: str, kept: bool) -> None:
    value = label_value(version)

    assert LABEL_VALUE.fullmatch(value) and len(value) <= 63
    assert (value == version) is kept


def test_a_kubernetes_subject_keeps_its_own_namespace_and_account() -> None:
    assert service_account("system:serviceaccount:shop:cart", namespace="default") == ("shop", "cart")
    assert service_account("Web_Frontend", namespace="prod") == ("prod", dns_label("Web_Frontend"))
    assert (
        spiffe_principal("orders", namespace="prod", trust_domain="cluster.local") == "cluster.local/ns/prod/sa/orders"
    )
