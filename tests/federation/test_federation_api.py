"""The federation endpoints and settings, in process: peers come only from the settings or these endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from maxine_registry.http import create_app
from maxine_registry.operations import Operations
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings, SettingsError, load_settings, parse_peer_list, redact_url

FEDERATION = "/api/maxine/serviceops/federation"
Client = TestClient[Any, Any]


async def open_client(**settings: Any) -> Client:
    operations = Operations(registry=Registry(), settings=Settings(health_checks=False, **settings))
    client: Client = TestClient(TestServer(create_app(operations)))
    await client.start_server()
    return client


@pytest.fixture
async def federation_api() -> AsyncIterator[Client]:
    client = await open_client(federation_enabled=True)
    try:
        yield client
    finally:
        await client.close()


async def test_there_are_no_peers_by_default(federation_api: Client) -> None:
    response = await federation_api.get(FEDERATION)

    document = await response.json()
    assert (document["enabled"], document["peers"]) == (True, [])


async def test_a_peer_is_added_listed_and_removed(federation_api: Client) -> None:
    added = await federation_api.post(FEDERATION + "/add", json={"name": "eu", "url": "http://127.0.0.1:9/"})
    assert added.status == 200
    assert (await added.json())["url"] == "http://127.0.0.1:9"

    peers = (await (await federation_api.get(FEDERATION)).json())["peers"]
    assert [(peer["name"], peer["url"], peer["source"]) for peer in peers] == [("eu", "http://127.0.0.1:9", "api")]

    removed = await federation_api.post(FEDERATION + "/remove", json={"name": "eu"})
    assert (removed.status, (await removed.json())["removed"]) == (200, True)
    assert (await (await federation_api.get(FEDERATION)).json())["peers"] == []


async def test_a_peer_password_is_never_shown(federation_api: Client) -> None:
    await federation_api.post(FEDERATION + "/add", json={"name": "eu", "url": "https://sync:s3cret@127.0.0.1:9443"})

    listing = await (await federation_api.get(FEDERATION)).text()

    assert "s3cret" not in listing
    assert "https://sync:***@127.0.0.1:9443" in listing


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "eu", "url": "ftp://127.0.0.1:21"}, 400, "invalid_input"),
        ({"name": "eu", "url": "http://"}, 400, "invalid_input"),
        ({"name": "eu", "url": "http://127.0.0.1:9/?x=1"}, 400, "invalid_input"),
        ({"name": "not a name", "url": "http://127.0.0.1:9"}, 400, "invalid_input"),
        ({"url": "http://127.0.0.1:9"}, 400, "invalid_input"),
        (["eu"], 400, "invalid_input"),
    ],
)
async def test_a_bad_peer_is_refused_and_nothing_changes(
    federation_api: Client, body: Any, status: int, code: str
) -> None:
    response = await federation_api.post(FEDERATION + "/add", json=body)

    assert (response.status, (await response.json())["code"]) == (status, code)
    assert (await (await federation_api.get(FEDERATION)).json())["peers"] == []


async def test_a_name_taken_by_another_url_is_a_conflict(federation_api: Client) -> None:
    await federation_api.post(FEDERATION + "/add", json={"name": "eu", "url": "http://127.0.0.1:9"})

    again = await federation_api.post(FEDERATION + "/add", json={"name": "eu", "url": "http://127.0.0.1:9"})
    other = await federation_api.post(FEDERATION + "/add", json={"name": "eu", "url": "http://127.0.0.1:10"})

    assert again.status == 200
    assert (other.status, (await other.json())["code"]) == (409, "peer_exists")


async def test_removing_an_unknown_peer_is_404(federation_api: Client) -> None:
    response = await federation_api.post(FEDERATION + "/remove", json={"name": "nobody"})

    assert (response.status, (await response.json())["code"]) == (404, "peer_not_found")


async def test_with_federation_off_peers_cannot_be_added() -> None:
    client = await open_client()
    try:
        listing = await (await client.get(FEDERATION)).json()
        response = await client.post(FEDERATION + "/add", json={"name": "eu", "url": "http://127.0.0.1:9"})

        assert (listing["enabled"], listing["peers"]) == (False, [])
        assert (response.status, (await response.json())["code"]) == (409, "federation_disabled")
    finally:
        await client.close()


def test_peers_from_the_settings_are_named_after_their_address_unless_named() -> None:
    peers = parse_peer_list("http://10.1.0.5:8080, eu=https://maxine.eu.example:8443/registry/,")

    assert [(peer.name, peer.url) for peer in peers] == [
        ("10.1.0.5-8080", "http://10.1.0.5:8080"),
        ("eu", "https://maxine.eu.example:8443/registry"),
    ]


@pytest.mark.parametrize(
    "value", ["ftp://10.1.0.5", "10.1.0.5:8080", "http://a:1,http://a:1", "eu=http://a:1,eu=http://b:1"]
)
def test_bad_federation_peers_stop_the_start(value: str) -> None:
    with pytest.raises(SettingsError, match="FEDERATION_PEERS"):
        load_settings([], environ={"FEDERATION_PEERS": value})


def test_federation_is_off_and_lists_no_peer_by_default() -> None:
    settings = load_settings([], environ={})

    assert (settings.federation_enabled, settings.federation_peers, settings.federation_timeout) == (False, "", 5000)


def test_a_redis_password_and_url_are_never_in_the_logged_settings() -> None:
    settings = load_settings(
        ["--redis-url", "redis://:hunter2@127.0.0.1:6379/0"], environ={"REDIS_PASSWORD": "hunter3"}
    )

    logged = str(settings.public())
    assert "hunter2" not in logged and "hunter3" not in logged
    assert "hunter" not in repr(settings)
    assert redact_url("https://u:p@h:1/x") == "https://u:***@h:1/x"
