"""The dependency graph page in headless Chromium against a real ``maxine``: nodes, cycle warning, impact, exports."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import BrowserPage, MaxineProcess, MaxineProcessFactory, http_json

DEPENDENCY = "/api/maxine/serviceops/dependency"


def declare(server: MaxineProcess, edges: list[tuple[str, str]]) -> None:
    for service_name, depends_on in edges:
        status, answer = http_json(
            server.base_url + f"{DEPENDENCY}/add",
            method="POST",
            body={"serviceName": service_name, "dependsOn": depends_on},
        )
        assert status == 200, answer


def test_the_page_draws_each_service_warns_of_cycles_and_shows_impact(
    maxine_process: MaxineProcessFactory, browser_page: BrowserPage, tmp_path: Path
) -> None:
    server = maxine_process()
    declare(
        server,
        [
            ("web", "orders"),
            ("mobile", "orders"),
            ("orders", "payments"),
            ("payments", "ledger"),
            ("ledger", "orders"),
            ("reports", "web"),
        ],
    )
    page = browser_page.page

    page.goto(server.base_url + "/dependency-graph")
    page.wait_for_selector("#status:has-text('6 services')")
    drawn = page.eval_on_selector_all("svg#graph g.node", "nodes => nodes.map(node => node.dataset.service)")
    warning = page.locator("#cycle-warning")

    assert sorted(drawn) == ["ledger", "mobile", "orders", "payments", "reports", "web"]
    assert page.locator("svg#graph line.edge").count() == 6
    assert page.locator("svg#graph line.edge.cycle").count() == 3
    assert warning.is_visible()
    assert "Circular dependencies: 1 cycle found." in warning.inner_text()
    assert "ledger \u2192 orders \u2192 payments \u2192 ledger" in warning.inner_text()

    page.click('svg#graph g.node[data-service="orders"]')
    panel = page.locator("#impact-panel")
    panel.locator("text=Impact of a failure").wait_for()
    lines = [line.strip() for line in panel.inner_text().splitlines() if line.strip()]

    assert lines[0] == "orders"
    assert lines[lines.index("Depends on".upper()) + 1 : lines.index("Depended on by".upper())] == ["payments"]
    impact = lines[lines.index("Impact of a failure".upper()) + 1 :]
    assert impact == [
        "ledger (directly)",
        "mobile (directly)",
        "web (directly)",
        "payments (2 hops away)",
        "reports (2 hops away)",
    ]

    with page.expect_download() as json_download:
        page.click("#export-json")
    with page.expect_download() as svg_download:
        page.click("#export-svg")
    exported = json.loads(Path(json_download.value.path()).read_text())
    svg = Path(svg_download.value.path()).read_text()

    assert exported["graph"] == server.get_json(f"{DEPENDENCY}/graph")
    assert exported["cycles"] == [["ledger", "orders", "payments", "ledger"]]
    assert json_download.value.suggested_filename == "dependency-graph.json"
    assert svg.startswith("<?xml") and "<svg" in svg and 'data-service="reports"' in svg
    assert browser_page.errors == []


def test_without_cycles_the_page_shows_no_warning(
    maxine_process: MaxineProcessFactory, browser_page: BrowserPage
) -> None:
    server = maxine_process()
    declare(server, [("web", "orders"), ("orders", "payments")])
    page = browser_page.page

    page.goto(server.base_url + "/dependency-graph")
    page.wait_for_selector("#status:has-text('3 services')")

    assert page.locator("svg#graph g.node").count() == 3
    assert page.locator("#cycle-warning").is_hidden()
    assert browser_page.errors == []
