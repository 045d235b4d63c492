"""Governance as callers see it: ACLs, intentions and the blacklist on every surface, and their snapshot."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.errors import InvalidInput
from maxine_registry.events import EventBus
from maxine_registry.governance import (
    ALLOW,
    DENY,
    MAX_ACL_ENTRIES,
    Action,
    Governance,
    Intention,
    intention_precedence,
    parse_acl,
)
from maxine_registry.http.common import OPERATIONS_KEY
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings

Client = TestClient[Any, Any]
SERVICEOPS = "/api/maxine/serviceops"
CALLER = "X-Maxine-Caller"


async def register(api: Client, service: str = "orders", *, port: int = 8080, prefix: str = "") -> Any:
    return await api.post(f"{prefix}/register", json={"serviceName": service, "host": "10.0.0.1", "port": port})


async def discover(api: Client, service: str = "orders", *, caller: str | None = None, prefix: str = "") -> Any:
    headers = {CALLER: caller} if caller is not None else {}
    return await api.get(f"{prefix}/discover", params={"serviceName": service}, headers=headers)


async def expect_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    return body


async def expect_ok(response: Any) -> Any:
    assert response.status == 200, await response.text()
    return await response.json()


async def set_acl(api: Client, service: str = "orders", **lists: list[str]) -> Any:
    return await expect_ok(await api.post(f"{SERVICEOPS}/acl/set", json={"serviceName": service, **lists}))


async def set_intention(api: Client, source: str, destination: str, action: str) -> Any:
    body = {"source": source, "destination": destination, "action": action}
    return await expect_ok(await api.post(f"{SERVICEOPS}/intention/set", json=body))


def event_names(registry: Registry) -> list[str]:
    return [event.event for event in registry.events.history(limit=1000)]


# ACL endpoints.


async def test_an_acl_round_trips_through_set_get_list_and_delete(api: Client, registry: Registry) -> None:
    stored = await set_acl(api, allow=["billing", "web", "web"], deny=["batch"])

    fetched = await expect_ok(await api.get(f"{SERVICEOPS}/acl/orders"))
    listed = await expect_ok(await api.get(f"{SERVICEOPS}/acl"))
    deleted = await expect_ok(await api.delete(f"{SERVICEOPS}/acl/orders"))
    gone = await api.get(f"{SERVICEOPS}/acl/orders")

    assert stored == {"serviceName": "orders", "allow": ["billing", "web"], "deny": ["batch"]}
    assert fetched == stored
    assert listed == {"acls": [stored], "count": 1}
    assert deleted == {"serviceName": "orders", "deleted": True}
    await expect_error(gone, 404, "acl_not_found")
    assert event_names(registry).count("acl_changed") == 2


async def test_deleting_a_missing_acl_is_not_found(api: Client) -> None:
    await expect_error(await api.delete(f"{SERVICEOPS}/acl/orders"), 404, "acl_not_found")


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"allow": ["web"]},
        {"serviceName": "bad name", "allow": ["web"]},
        {"serviceName": "orders", "allow": "web"},
        {"serviceName": "orders", "allow": ["web", 7]},
        {"serviceName": "orders", "deny": ["has space"]},
        {"serviceName": "orders", "deny": [""]},
        {"serviceName": "orders", "allow": ["a/b"]},
        {"serviceName": "orders", "allow": ["x" * 257]},
    ],
)
async def test_bad_acls_are_refused_and_change_nothing(api: Client, registry: Registry, body: Any) -> None:
    await set_acl(api, allow=["web"])
    before = len(event_names(registry))

    response = await api.post(f"{SERVICEOPS}/acl/set", json=body)

    await expect_error(response, 400, "invalid_input")
    assert await expect_ok(await api.get(f"{SERVICEOPS}/acl/orders")) == {
        "serviceName": "orders",
        "allow": ["web"],
        "deny": [],
    }
    assert len(event_names(registry)) == before


async def test_acl_routes_refuse_bad_service_names_and_bad_json(api: Client) -> None:
    await expect_error(await api.get(f"{SERVICEOPS}/acl/-bad"), 400, "invalid_input")
    await expect_error(await api.delete(f"{SERVICEOPS}/acl/-bad"), 400, "invalid_input")
    await expect_error(await api.post(f"{SERVICEOPS}/acl/set", data=b"{nope"), 400, "invalid_json")


def test_an_acl_list_is_bounded() -> None:
    with pytest.raises(InvalidInput, match=f"limit is {MAX_ACL_ENTRIES}"):
        parse_acl({"serviceName": "orders", "allow": [f"caller-{n}" for n in range(MAX_ACL_ENTRIES + 1)]})


# ACLs on discovery.


@pytest.mark.parametrize(
    ("allow", "deny", "caller", "passes"),
    [
        ([], [], None, True),
        ([], [], "anyone", True),
        ([], ["batch"], "batch", False),
        ([], ["batch"], "web", True),
        ([], ["batch"], None, True),
        (["web"], [], "web", True),
        (["web"], [], "billing", False),
        (["web"], [], None, False),
        (["*"], [], "billing", True),
        (["*"], [], None, False),
        (["web"], ["web"], "web", False),
        (["*"], ["batch"], "batch", False),
        ([], ["*"], "web", False),
        ([], ["*"], None, False),
    ],
)
async def test_acls_decide_who_discovers(
    api: Client, allow: list[str], deny: list[str], caller: str | None, passes: bool
) -> None:
    await register(api)
    await set_acl(api, allow=allow, deny=deny)

    response = await discover(api, caller=caller)

    if passes:
        assert (await expect_ok(response))["serviceName"] == "orders"
    else:
        body = await expect_error(response, 403, "access_denied")
        assert "orders" in body["error"]
        assert (caller or "anonymous") in body["error"]


async def test_the_caller_query_parameter_names_the_caller_too(api: Client) -> None:
    await register(api)
    await set_acl(api, allow=["web"])

    response = await api.get("/discover", params={"serviceName": "orders", "caller": "web"})

    assert response.status == 200


async def test_an_acl_guards_the_serviceops_surface_too(api: Client) -> None:
    await register(api)
    await set_acl(api, deny=["batch"])

    response = await discover(api, caller="batch", prefix=SERVICEOPS)

    await expect_error(response, 403, "access_denied")


async def test_an_acl_guards_the_proxy(api: Client) -> None:
    await register(api)
    await set_acl(api, allow=["web"])

    # The guard refuses before any instance is contacted, so no backend has to run.
    response = await api.get("/proxy/orders/anything", headers={CALLER: "batch"})

    body = await expect_error(response, 403, "access_denied")
    assert "batch" in body["error"]


async def test_an_acl_leaves_other_services_alone(api: Client) -> None:
    await register(api, "orders")
    await register(api, "billing")
    await set_acl(api, "orders", allow=["web"])

    assert (await discover(api, "billing", caller="batch")).status == 200


# Intention endpoints.


async def test_an_intention_round_trips_through_set_get_list_and_delete(api: Client, registry: Registry) -> None:
    stored = await set_intention(api, "web", "orders", "deny")
    await set_intention(api, "*", "*", "allow")

    fetched = await expect_ok(await api.get(f"{SERVICEOPS}/intention/web/orders"))
    listed = await expect_ok(await api.get(f"{SERVICEOPS}/intention"))
    deleted = await expect_ok(await api.delete(f"{SERVICEOPS}/intention/web/orders"))
    gone = await api.get(f"{SERVICEOPS}/intention/web/orders")

    assert stored == {"source": "web", "destination": "orders", "action": "deny", "precedence": 4}
    assert fetched == stored
    assert listed["count"] == 2
    assert [(rule["source"], rule["destination"]) for rule in listed["intentions"]] == [("web", "orders"), ("*", "*")]
    assert deleted == {"source": "web", "destination": "orders", "deleted": True}
    await expect_error(gone, 404, "intention_not_found")
    assert event_names(registry).count("intention_changed") == 3


async def test_setting_an_intention_again_replaces_its_action(api: Client) -> None:
    await set_intention(api, "web", "orders", "deny")
    await set_intention(api, "web", "orders", "allow")

    listed = await expect_ok(await api.get(f"{SERVICEOPS}/intention"))

    assert [rule["action"] for rule in listed["intentions"]] == ["allow"]


async def test_wildcard_intentions_are_reachable_by_path(api: Client) -> None:
    await set_intention(api, "*", "orders", "deny")

    fetched = await expect_ok(await api.get(f"{SERVICEOPS}/intention/*/orders"))
    deleted = await api.delete(f"{SERVICEOPS}/intention/%2A/orders")

    assert fetched["precedence"] == 3
    assert deleted.status == 200


@pytest.mark.parametrize(
    "body",
    [
        None,
        "allow",
        {"source": "web", "destination": "orders"},
        {"source": "web", "destination": "orders", "action": "permit"},
        {"source": "web", "destination": "orders", "action": True},
        {"destination": "orders", "action": "allow"},
        {"source": "web", "action": "allow"},
        {"source": "web", "destination": "bad name", "action": "allow"},
        {"source": "web@x:y", "destination": "ord@rs", "action": "allow"},
        {"source": "we b", "destination": "orders", "action": "allow"},
        {"source": ["web"], "destination": "orders", "action": "allow"},
    ],
)
async def test_bad_intentions_are_refused_and_change_nothing(api: Client, registry: Registry, body: Any) -> None:
    before = len(event_names(registry))

    response = await api.post(f"{SERVICEOPS}/intention/set", json=body)

    await expect_error(response, 400, "invalid_input")
    assert await expect_ok(await api.get(f"{SERVICEOPS}/intention")) == {"intentions": [], "count": 0}
    assert len(event_names(registry)) == before


async def test_intention_paths_with_bad_names_are_refused(api: Client) -> None:
    await expect_error(await api.get(f"{SERVICEOPS}/intention/web/bad%20name"), 400, "invalid_input")
    await expect_error(await api.delete(f"{SERVICEOPS}/intention/-web/orders"), 400, "invalid_input")
    await expect_error(await api.delete(f"{SERVICEOPS}/intention/web/orders"), 404, "intention_not_found")


async def test_caller_names_may_be_token_subjects(api: Client) -> None:
    stored = await set_intention(api, "system:serviceaccount:shop:web", "orders", "allow")

    assert stored["source"] == "system:serviceaccount:shop:web"


# Intention precedence.


class Case(NamedTuple):
    """Rules as (source, destination, action); who asks for what; the action and the rule that decide."""

    rules: list[tuple[str, str, Action]]
    caller: str | None
    destination: str
    action: Action
    winner: tuple[str, str] | None


PRECEDENCE_CASES = {
    "no-rule-default-allow": Case([], "web", "orders", ALLOW, None),
    "exact-deny": Case([("web", "orders", DENY)], "web", "orders", DENY, ("web", "orders")),
    "exact-rule-other-caller": Case([("web", "orders", DENY)], "batch", "orders", ALLOW, None),
    "exact-exact-beats-wildcard-source": Case(
        [("web", "orders", ALLOW), ("*", "orders", DENY)], "web", "orders", ALLOW, ("web", "orders")
    ),
    "exact-exact-beats-wildcard-both": Case(
        [("web", "orders", DENY), ("*", "*", ALLOW)], "web", "orders", DENY, ("web", "orders")
    ),
    "exact-destination-beats-exact-source": Case(
        [("*", "orders", ALLOW), ("web", "*", DENY)], "web", "orders", ALLOW, ("*", "orders")
    ),
    "exact-destination-beats-exact-source-deny": Case(
        [("*", "orders", DENY), ("web", "*", ALLOW)], "web", "orders", DENY, ("*", "orders")
    ),
    "exact-source-beats-wildcard-both": Case(
        [("web", "*", DENY), ("*", "*", ALLOW)], "web", "orders", DENY, ("web", "*")
    ),
    "wildcard-both-deny": Case([("*", "*", DENY)], "web", "orders", DENY, ("*", "*")),
    "exact-allow-overrides-global-deny": Case(
        [("*", "*", DENY), ("web", "orders", ALLOW)], "web", "orders", ALLOW, ("web", "orders")
    ),
    "anonymous-sees-only-wildcard-sources": Case(
        [("web", "orders", ALLOW), ("*", "orders", DENY)], None, "orders", DENY, ("*", "orders")
    ),
    "anonymous-ignores-named-source": Case([("web", "*", DENY)], None, "orders", ALLOW, None),
    "anonymous-wildcard-both": Case([("*", "*", DENY)], None, "orders", DENY, ("*", "*")),
    "rule-for-another-destination-ignored": Case([("*", "billing", DENY)], "web", "orders", ALLOW, None),
}
precedence_cases = pytest.mark.parametrize("case", PRECEDENCE_CASES.values(), ids=PRECEDENCE_CASES.keys())


@precedence_cases
def test_the_most_specific_intention_wins(case: Case) -> None:
    governance = Governance(events=EventBus())
    for source, destination, action in case.rules:
        governance.set_intention(Intention(source=source, destination=destination, action=action))

    decision = governance.decide(source=case.caller, destination=case.destination)

    assert decision.action == case.action
    matched = (decision.intention.source, decision.intention.destination) if decision.intention else None
    assert matched == case.winner


@pytest.mark.parametrize(
    ("source", "destination", "precedence"),
    [("web", "orders", 4), ("*", "orders", 3), ("web", "*", 2), ("*", "*", 1)],
)
def test_precedence_ranks_a_named_destination_above_a_named_source(
    source: str, destination: str, precedence: int
) -> None:
    assert intention_precedence(source=source, destination=destination) == precedence


@precedence_cases
async def test_the_check_endpoint_explains_the_decision(api: Client, case: Case) -> None:
    for source, destination, action in case.rules:
        await set_intention(api, source, destination, action)

    params = {"destination": case.destination} | ({"source": case.caller} if case.caller is not None else {})
    decision = await expect_ok(await api.get(f"{SERVICEOPS}/intention/check", params=params))

    assert decision["action"] == case.action
    assert decision["allowed"] is (case.action == ALLOW)
    assert decision["source"] == case.caller
    assert decision["reason"] == ("intention" if case.winner else "default")
    matched = (decision["intention"]["source"], decision["intention"]["destination"]) if case.winner else None
    assert matched == case.winner


@precedence_cases
async def test_discovery_follows_the_winning_intention(api: Client, case: Case) -> None:
    await register(api, case.destination)
    for source, destination, action in case.rules:
        await set_intention(api, source, destination, action)

    response = await discover(api, case.destination, caller=case.caller)

    assert response.status == (200 if case.action == ALLOW else 403)


@pytest.mark.parametrize(
    "params",
    [{}, {"source": "web"}, {"source": "web", "destination": "*"}, {"source": "we b", "destination": "orders"}],
)
async def test_the_check_endpoint_refuses_bad_queries(api: Client, params: dict[str, str]) -> None:
    await expect_error(await api.get(f"{SERVICEOPS}/intention/check", params=params), 400, "invalid_input")


# Intentions on discovery.


async def test_a_deny_intention_refuses_discovery_naming_caller_and_service(api: Client) -> None:
    await register(api)
    await set_intention(api, "web", "orders", "deny")

    refused = await discover(api, caller="web")
    allowed = await discover(api, caller="billing")

    body = await expect_error(refused, 403, "access_denied")
    assert "'web'" in body["error"] and "'orders'" in body["error"]
    assert allowed.status == 200


async def test_an_anonymous_caller_is_bound_by_wildcard_source_intentions(api: Client) -> None:
    await register(api)
    await set_intention(api, "*", "orders", "deny")
    await set_intention(api, "web", "orders", "allow")

    assert (await discover(api)).status == 403
    assert (await discover(api, caller="web")).status == 200
    assert (await discover(api, caller="batch")).status == 403


async def test_acl_and_intentions_must_both_let_a_caller_through(api: Client) -> None:
    await register(api)
    await set_acl(api, allow=["web", "billing"])
    await set_intention(api, "billing", "orders", "deny")

    assert (await discover(api, caller="web")).status == 200
    await expect_error(await discover(api, caller="billing"), 403, "access_denied")
    await expect_error(await discover(api, caller="batch"), 403, "access_denied")


@pytest.mark.parametrize("settings", [Settings(intentions_default="deny")])
async def test_a_deny_default_refuses_callers_no_intention_allows(api: Client) -> None:
    await register(api)
    await set_intention(api, "web", "orders", "allow")

    refused = await discover(api, caller="batch")
    anonymous = await discover(api)
    allowed = await discover(api, caller="web")
    checked = await expect_ok(await api.get(f"{SERVICEOPS}/intention/check", params={"destination": "orders"}))

    body = await expect_error(refused, 403, "access_denied")
    assert "default is deny" in body["error"]
    await expect_error(anonymous, 403, "access_denied")
    assert allowed.status == 200
    assert checked == {
        "source": None,
        "destination": "orders",
        "action": "deny",
        "allowed": False,
        "intention": None,
        "reason": "default",
    }


# The blacklist, on both surfaces.

BLACKLIST_SURFACES = [
    pytest.param(("POST", "/blacklist/add"), ("DELETE", "/blacklist/remove"), id="root"),
    pytest.param(
        ("POST", f"{SERVICEOPS}/blacklist/service/add"),
        ("POST", f"{SERVICEOPS}/blacklist/service/remove"),
        id="serviceops",
    ),
]


@pytest.mark.parametrize(("add", "remove"), BLACKLIST_SURFACES)
async def test_blacklisting_hides_a_service_and_unblacklisting_restores_it(
    api: Client, registry: Registry, add: tuple[str, str], remove: tuple[str, str]
) -> None:
    await register(api, port=8080)

    added = await expect_ok(await api.request(add[0], add[1], json={"serviceName": "orders"}))
    hidden = await discover(api, caller="web")
    hidden_serviceops = await discover(api, prefix=SERVICEOPS)
    refused = await register(api, port=8081)
    refreshed = await register(api, port=8080)
    status = await expect_ok(await api.get(f"{SERVICEOPS}/blacklist/service/orders"))
    listed = await expect_ok(await api.get("/blacklist"))
    removed = await expect_ok(await api.request(remove[0], remove[1], json={"serviceName": "orders"}))
    restored = await discover(api)
    registered_after = await register(api, port=8081)

    assert added == {"serviceName": "orders", "blacklisted": True, "changed": True}
    body = await expect_error(hidden, 403, "service_blacklisted")
    assert "orders" in body["error"]
    await expect_error(hidden_serviceops, 403, "service_blacklisted")
    await expect_error(refused, 403, "service_blacklisted")
    assert refreshed.status == 200
    assert status == {"serviceName": "orders", "blacklisted": True}
    assert listed == {"blacklist": ["orders"], "count": 1}
    assert removed == {"serviceName": "orders", "blacklisted": False, "changed": True}
    assert (await expect_ok(restored))["nodeId"] == "orders:10.0.0.1:8080"
    assert registered_after.status == 200
    assert event_names(registry).count("blacklist_changed") == 2


async def test_blacklist_changes_are_idempotent(api: Client) -> None:
    await api.post("/blacklist/add", json={"serviceName": "orders"})

    again = await expect_ok(await api.post("/blacklist/add", json={"serviceName": "orders"}))
    await api.delete("/blacklist/remove", params={"serviceName": "orders"})
    removed_again = await expect_ok(await api.delete("/blacklist/remove", params={"serviceName": "orders"}))

    assert again == {"serviceName": "orders", "blacklisted": True, "changed": False}
    assert removed_again == {"serviceName": "orders", "blacklisted": False, "changed": False}


async def test_the_blacklist_lists_on_both_surfaces_and_reports_unlisted_services(api: Client) -> None:
    await api.post("/blacklist/add", json={"serviceName": "zeta"})
    await api.post(f"{SERVICEOPS}/blacklist/service/add", json={"serviceName": "alpha"})

    root = await expect_ok(await api.get("/blacklist"))
    serviceops = await expect_ok(await api.get(f"{SERVICEOPS}/blacklist/service"))
    status = await expect_ok(await api.get(f"{SERVICEOPS}/blacklist/service/orders"))

    assert root == serviceops == {"blacklist": ["alpha", "zeta"], "count": 2}
    assert status == {"serviceName": "orders", "blacklisted": False}


async def test_the_blacklist_guards_the_proxy(api: Client) -> None:
    await register(api)
    await api.post("/blacklist/add", json={"serviceName": "orders"})

    await expect_error(await api.get("/proxy/orders/anything"), 403, "service_blacklisted")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/blacklist/add", None),
        ("POST", "/blacklist/add", {"serviceName": ""}),
        ("POST", "/blacklist/add", {"serviceName": "bad name"}),
        ("POST", "/blacklist/add", ["orders"]),
        ("DELETE", "/blacklist/remove", {"name": "orders"}),
        ("POST", f"{SERVICEOPS}/blacklist/service/add", {"serviceName": 5}),
        ("POST", f"{SERVICEOPS}/blacklist/service/remove", None),
    ],
)
async def test_bad_blacklist_changes_are_refused_and_change_nothing(
    api: Client, method: str, path: str, body: Any
) -> None:
    await api.post("/blacklist/add", json={"serviceName": "orders"})

    response = await api.request(method, path, json=body)

    await expect_error(response, 400, "invalid_input")
    assert await expect_ok(await api.get("/blacklist")) == {"blacklist": ["orders"], "count": 1}


async def test_a_bad_name_in_the_blacklist_status_path_is_refused(api: Client) -> None:
    await expect_error(await api.get(f"{SERVICEOPS}/blacklist/service/.hidden"), 400, "invalid_input")


# Snapshots.


def test_the_snapshot_part_restores_every_rule() -> None:
    source = Governance(events=EventBus())
    source.set_intention(Intention(source="web", destination="orders", action=DENY))
    source.set_intention(Intention(source="*", destination="*", action=ALLOW))
    source.blacklist_add("legacy")
    target = Governance(events=EventBus())
    target.blacklist_add("other")

    apply = target.prepare(source.export())
    apply()

    assert target.export() == source.export()
    assert target.is_blacklisted("legacy") and not target.is_blacklisted("other")
    assert target.decide(source="web", destination="orders").action == DENY


async def test_the_governance_part_is_registered_for_backups(api: Client) -> None:
    await set_acl(api, allow=["web"])
    await api.post("/blacklist/add", json={"serviceName": "legacy"})
    await set_intention(api, "web", "orders", "deny")

    exported = api.app[OPERATIONS_KEY].snapshot_parts["governance"].export()

    assert exported == {
        "acls": [{"serviceName": "orders", "allow": ["web"], "deny": []}],
        "intentions": [{"source": "web", "destination": "orders", "action": "deny"}],
        "blacklist": ["legacy"],
    }


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"acls": "orders"},
        {"acls": [{"serviceName": "orders", "allow": ["bad name"]}]},
        {"intentions": [{"source": "web", "destination": "orders", "action": "maybe"}]},
        {"blacklist": ["ok", "not ok"]},
    ],
)
def test_a_bad_snapshot_is_refused_before_anything_changes(data: Any) -> None:
    governance = Governance(events=EventBus())
    governance.blacklist_add("kept")
    before = governance.export()

    with pytest.raises(InvalidInput):
        governance.prepare(data)

    assert governance.export() == before
