"""The dashboard: the page in a real browser against a real ``maxine``, and the state document it draws."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from maxine_registry.http.dashboard import MAX_DASHBOARD_NODES
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from tests.conftest import BrowserPage, MaxineProcessFactory, http_json
from tests.registry.conftest import ADMIN_PASSWORD, JWT_TEST_SECRET

Client = TestClient[object, object]
# How long the page may take to show a change once the registry made it.
LIVE_WITHIN_MS = 2000


def register(base_url: str, service_name: str, *, port: int = 8080, version: str | None = None) -> str:
    metadata = {"version": version} if version else {}
    body = {"serviceName": service_name, "host": "10.0.0.5", "port": port, "metadata": metadata}
    status, document = http_json(base_url + "/register", method="POST", body=body)
    assert status == 200, document
    node_id: str = document["nodeId"]
    return node_id


def open_dashboard(browser_page: BrowserPage, base_url: str) -> Any:
    page = browser_page.page
    page.goto(base_url + "/dashboard")
    page.wait_for_selector('#connection[data-state="live"]')
    return page


# In a browser.


def test_a_service_registered_while_the_page_is_open_shows_within_two_seconds(
    maxine_process: MaxineProcessFactory, browser_page: BrowserPage
) -> None:
    server = maxine_process()
    page = open_dashboard(browser_page, server.base_url)

    node_id = register(server.base_url, "orders", version="1.2")
    row = page.wait_for_selector(f'tr[data-node="{node_id}"]', timeout=LIVE_WITHIN_MS)
    page.wait_for_selector('#events li[data-event="service_registered"]', timeout=LIVE_WITHIN_MS)

    assert row is not None
    cells = [cell.strip() for cell in row.eval_on_selector_all("td", "cells => cells.map(cell => cell.textContent)")]
    assert cells[:6] == ["orders", node_id, "10.0.0.5:8080", "1.2", "healthy", "closed"]
    assert page.text_content("#count-services") == "1"
    assert page.text_content("#count-nodes") == "1"
    assert browser_page.errors == []


def test_the_page_seeds_its_feed_from_history_and_shows_open_breakers(
    maxine_process: MaxineProcessFactory, browser_page: BrowserPage
) -> None:
    server = maxine_process()
    healthy = register(server.base_url, "payments", port=9000)
    failing = register(server.base_url, "payments", port=9001)
    for _ in range(5):
        status, _ = http_json(
            server.base_url + "/record-response-time", method="POST", body={"nodeId": failing, "outcome": "failure"}
        )
        assert status == 200

    page = open_dashboard(browser_page, server.base_url)
    page.wait_for_selector(f'tr[data-node="{failing}"] .badge.bad:text("open")', timeout=LIVE_WITHIN_MS)
    page.wait_for_selector('#events li[data-event="circuit_open"]', timeout=LIVE_WITHIN_MS)

    assert page.text_content("#count-breakers") == "1"
    assert page.locator(f'tr[data-node="{healthy}"] .badge.good').text_content() == "healthy"
    assert page.locator('#events li[data-event="service_registered"]').count() == 2
    assert browser_page.errors == []


def test_a_deregistered_node_leaves_the_table_live(
    maxine_process: MaxineProcessFactory, browser_page: BrowserPage
) -> None:
    server = maxine_process()
    node_id = register(server.base_url, "orders")
    page = open_dashboard(browser_page, server.base_url)
    page.wait_for_selector(f'tr[data-node="{node_id}"]')

    status, _ = http_json(server.base_url + "/deregister", method="DELETE", body={"nodeId": node_id})
    page.wait_for_selector(f'tr[data-node="{node_id}"]', state="detached", timeout=LIVE_WITHIN_MS)

    assert status == 200
    assert page.is_visible("#empty")
    assert browser_page.errors == []


def test_with_auth_on_the_page_asks_for_a_token_and_goes_live_with_it(
    maxine_process: MaxineProcessFactory, browser_page: BrowserPage, password_hashes: dict[str, str]
) -> None:
    auth = ["--auth-enabled", "--jwt-secret", JWT_TEST_SECRET, "--admin-password-hash", password_hashes["admin"]]
    server = maxine_process(args=auth)
    status, signed_in = http_json(
        server.base_url + "/signin", method="POST", body={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert status == 200
    page = browser_page.page

    page.goto(server.base_url + "/dashboard")
    page.wait_for_selector('#connection[data-state="auth"]')
    page.fill("#token", signed_in["token"])
    page.click('#token-form button[type="submit"]')
    page.wait_for_selector('#connection[data-state="live"]')
    registered = page.evaluate(REGISTER_WITH_TOKEN, signed_in["token"])
    page.wait_for_selector('tr[data-service="orders"]', timeout=LIVE_WITHIN_MS)

    assert registered == 200
    assert page.evaluate("sessionStorage.getItem('maxine.token')") == signed_in["token"]
    assert browser_page.errors == []


# The page's own fetch, so that the request carries the token the way the page sends it.
REGISTER_WITH_TOKEN = """async (token) => {
  const response = await fetch("/register", {
    method: "POST",
    headers: {"Content-Type": "application/json", Authorization: `Bearer ${token}`},
    body: JSON.stringify({serviceName: "orders", host: "10.0.0.5", port: 8080}),
  });
  return response.status;
}"""


# The state document and the page's files, in-process.


async def test_the_state_lists_services_nodes_health_and_breakers(api: Client) -> None:
    for port in (8080, 8081):
        await api.post("/register", json={"serviceName": "orders", "host": "10.0.0.5", "port": port})
    for _ in range(5):
        await api.post("/record-response-time", json={"nodeId": "orders:10.0.0.5:8081", "outcome": "failure"})

    state = await (await api.get("/dashboard/state")).json()

    assert (state["serviceCount"], state["nodeCount"], state["healthyNodes"], state["openBreakers"]) == (1, 2, 2, 1)
    (service,) = state["services"]
    assert service["name"] == "orders"
    assert [(node["nodeId"], node["healthy"], node["circuitBreaker"]) for node in service["nodes"]] == [
        ("orders:10.0.0.5:8080", True, "closed"),
        ("orders:10.0.0.5:8081", True, "open"),
    ]
    assert state["websocket"]["connections"] == 0
    assert state["truncated"] is False


async def test_the_state_lists_a_bounded_number_of_nodes_but_counts_them_all(api: Client, registry: Registry) -> None:
    for port in range(1, MAX_DASHBOARD_NODES + 11):
        body = {"serviceName": f"service-{port % 7}", "host": "10.0.0.5", "port": port}
        registry.register(parse_registration(body, max_metadata_bytes=1024))

    state = await (await api.get("/dashboard/state")).json()

    assert state["nodeCount"] == MAX_DASHBOARD_NODES + 10
    assert sum(len(service["nodes"]) for service in state["services"]) == MAX_DASHBOARD_NODES
    assert state["truncated"] is True


async def test_the_page_and_its_assets_come_from_maxine_under_a_strict_policy(api: Client) -> None:
    page = await api.get("/dashboard")
    script = await api.get("/dashboard/assets/dashboard.js")
    unknown = await api.get("/dashboard/assets/../../settings.py")
    missing = await api.get("/dashboard/assets/other.js")

    html = await page.text()
    assert page.status == 200
    assert page.content_type == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http://" not in html and "https://" not in html
    assert script.status == 200
    assert script.content_type == "text/javascript"
    assert unknown.status == 404
    assert (missing.status, (await missing.json())["code"]) == (404, "route_not_found")
