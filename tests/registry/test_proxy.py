"""
The proxy as clients and backends see it: what passes through, what is dropped, and every way a backend can fail.

Backends are real servers on loopback (``EchoBackend`` records what reached it); misbehaving ones
are raw TCP listeners (``RawBackend``) that hang, hang up or garble. The proxy's timeouts are
0.5 s here, so a hanging backend costs a test half a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, unused_port

from maxine_registry.errors import Forbidden
from maxine_registry.http.common import OPERATIONS_KEY
from maxine_registry.registry import Registry
from maxine_registry.settings import SettingsError, load_settings
from tests.registry.conftest import BACKEND_IO_TIMEOUT, EchoBackend, RawBackend, RawBehaviour

Client = TestClient[Any, Any]
StartEcho = Callable[..., Awaitable[EchoBackend]]
StartRaw = Callable[[RawBehaviour], Awaitable[RawBackend]]
SERVICEOPS = "/api/maxine/serviceops"


async def register(api: Client, port: int, *, service: str = "orders", host: str = "127.0.0.1", **body: Any) -> str:
    response = await api.post("/register", json={"serviceName": service, "host": host, "port": port, **body})
    assert response.status == 200, await response.text()
    node_id: str = (await response.json())["nodeId"]
    return node_id


async def expect_error(response: aiohttp.ClientResponse, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# What passes through.


async def test_a_get_reaches_the_backend_with_its_path_and_query_and_the_answer_comes_back(
    proxy_api: Client, echo_backends: StartEcho
) -> None:
    backend = await echo_backends("a")
    await register(proxy_api, backend.port)

    response = await proxy_api.get("/proxy/orders/items/a%20b?x=1&x=2&empty=", headers={"X-Request-Id": "r-1"})

    assert response.status == 200
    assert response.headers["X-Backend"] == "a"
    assert (await response.json())["target"] == "/items/a%20b?x=1&x=2&empty="
    assert [(seen.method, seen.target) for seen in backend.seen] == [("GET", "/items/a%20b?x=1&x=2&empty=")]
    assert backend.seen[0].headers["X-Request-Id"] == "r-1"


@pytest.mark.parametrize(("method", "status"), [("POST", 201), ("PUT", 200), ("DELETE", 200), ("PATCH", 200)])
async def test_methods_with_a_body_and_query_pass_through(
    proxy_api: Client, echo_backends: StartEcho, method: str, status: int
) -> None:
    backend = await echo_backends("a")
    await register(proxy_api, backend.port)
    body = b'{"item": 42}'

    response = await proxy_api.request(
        method, "/proxy/orders/items/42?dry=1", data=body, headers={"Content-Type": "application/json"}
    )
    answer = await response.json()

    assert response.status == status
    assert answer["method"] == method
    assert answer["target"] == "/items/42?dry=1"
    assert answer["bodySha256"] == hashlib.sha256(body).hexdigest()
    assert backend.seen[0].body == body
    assert backend.seen[0].headers["Content-Type"] == "application/json"


async def test_a_head_answer_keeps_its_content_length_and_has_no_body(
    proxy_api: Client, echo_backends: StartEcho
) -> None:
    async def sized(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 1234)

    backend = await echo_backends("a", handler=sized)
    await register(proxy_api, backend.port)

    response = await proxy_api.head("/proxy/orders/file")

    assert response.status == 200
    assert response.headers["Content-Length"] == "1234"
    assert await response.read() == b""
    assert backend.seen[0].method == "HEAD"


async def test_both_surfaces_serve_the_proxy_and_a_bare_service_path_asks_for_the_root(
    proxy_api: Client, echo_backends: StartEcho
) -> None:
    backend = await echo_backends("a")
    await register(proxy_api, backend.port)

    bare = await proxy_api.get("/proxy/orders")
    prefixed = await proxy_api.get(f"{SERVICEOPS}/proxy/orders/deep/path?q=1")

    assert (bare.status, prefixed.status) == (200, 200)
    assert [seen.target for seen in backend.seen] == ["/", "/deep/path?q=1"]


async def test_hop_by_hop_and_maxine_headers_are_dropped_and_forwarding_headers_added(
    proxy_api: Client, echo_backends: StartEcho
) -> None:
    backend = await echo_backends("a")
    await register(proxy_api, backend.port)

    await proxy_api.get(
        "/proxy/orders/",
        headers={
            "Connection": "keep-alive, X-Per-Hop",
            "X-Per-Hop": "dropped, Connection names it",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
            "X-Maxine-Strategy": "random",
            "X-Maxine-Caller": "billing",
            "X-Forwarded-For": "203.0.113.7",
            "Authorization": "Bearer for-the-backend",
            "X-End-To-End": "kept",
        },
    )
    seen = backend.seen[0].headers

    for dropped in ("X-Per-Hop", "Keep-Alive", "TE", "Proxy-Authorization", "X-Maxine-Strategy", "X-Maxine-Caller"):
        assert dropped not in seen, f"{dropped} reached the backend"
    assert seen["X-End-To-End"] == "kept"
    assert seen["Authorization"] == "Bearer for-the-backend"
    assert seen["Host"] == f"127.0.0.1:{backend.port}"
    assert seen["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == f"127.0.0.1:{proxy_api.port}"


async def test_hop_by_hop_headers_of_the_answer_are_dropped(proxy_api: Client, echo_backends: StartEcho) -> None:
    async def chatty(request: web.Request) -> web.StreamResponse:
        headers = {"X-Answer-Hop": "1", "Connection": "X-Answer-Hop", "Keep-Alive": "timeout=9", "X-Kept": "yes"}
        return web.Response(text="ok", headers=headers)

    backend = await echo_backends("a", handler=chatty)
    await register(proxy_api, backend.port)

    response = await proxy_api.get("/proxy/orders/")

    assert await response.text() == "ok"
    assert response.headers["X-Kept"] == "yes"
    assert "X-Answer-Hop" not in response.headers
    assert "Keep-Alive" not in response.headers


async def test_large_bodies_stream_through_in_both_directions(proxy_api: Client, echo_backends: StartEcho) -> None:
    async def echo_streaming(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response

    backend = await echo_backends("a", handler=echo_streaming)
    await register(proxy_api, backend.port)
    payload = random.Random(1).randbytes(5 * 1024 * 1024)

    response = await proxy_api.post("/proxy/orders/upload", data=payload)
    returned = await response.read()

    assert response.status == 200
    assert len(returned) == len(payload)
    assert hashlib.sha256(returned).digest() == hashlib.sha256(payload).digest()


async def test_the_answer_reaches_the_client_before_the_backend_has_finished_it(
    proxy_api: Client, echo_backends: StartEcho
) -> None:
    client_has_first_part = asyncio.Event()

    async def in_two_parts(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        # A proxy that buffered the whole answer would never let the client see "first".
        await asyncio.wait_for(client_has_first_part.wait(), BACKEND_IO_TIMEOUT)
        await response.write(b"second")
        await response.write_eof()
        return response

    backend = await echo_backends("a", handler=in_two_parts)
    await register(proxy_api, backend.port)

    response = await proxy_api.get("/proxy/orders/slow")
    first = await asyncio.wait_for(response.content.readexactly(5), BACKEND_IO_TIMEOUT)
    client_has_first_part.set()
    rest = await response.read()

    assert (first, rest) == (b"first", b"second")


async def test_the_request_body_reaches_the_backend_before_the_client_has_finished_it(
    proxy_api: Client, echo_backends: StartEcho
) -> None:
    backend_has_first_part = asyncio.Event()

    async def read_in_two_parts(request: web.Request) -> web.StreamResponse:
        first = await request.content.readexactly(5)
        backend_has_first_part.set()
        rest = await request.content.read()
        return web.Response(body=first + b"|" + rest)

    async def body_in_two_parts() -> AsyncIterator[bytes]:
        yield b"first"
        # A proxy that buffered the whole body would never pass "first" on.
        await asyncio.wait_for(backend_has_first_part.wait(), BACKEND_IO_TIMEOUT)
        yield b"second"

    backend = await echo_backends("a", handler=read_in_two_parts)
    await register(proxy_api, backend.port)

    response = await proxy_api.post("/proxy/orders/upload", data=body_in_two_parts())

    assert await response.read() == b"first|second"


# Choosing the instance.


async def test_round_robin_alternates_between_two_backends(proxy_api: Client, echo_backends: StartEcho) -> None:
    for name in ("a", "b"):
        await register(proxy_api, (await echo_backends(name)).port)

    answered = [(await proxy_api.get("/proxy/orders/")).headers["X-Backend"] for _ in range(4)]

    assert answered == ["a", "b", "a", "b"]


async def test_selection_headers_choose_the_version_and_tags(proxy_api: Client, echo_backends: StartEcho) -> None:
    old = await echo_backends("old")
    new = await echo_backends("new")
    await register(proxy_api, old.port, metadata={"version": "1.0", "tags": ["eu"]})
    await register(proxy_api, new.port, metadata={"version": "2.0", "tags": ["eu", "canary"]})

    by_version = [
        (await proxy_api.get("/proxy/orders/", headers={"X-Maxine-Version": "2.0"})).headers["X-Backend"]
        for _ in range(2)
    ]
    by_tags = [
        (await proxy_api.get("/proxy/orders/", headers={"X-Maxine-Tags": "canary, eu"})).headers["X-Backend"]
        for _ in range(2)
    ]

    assert by_version == ["new", "new"]
    assert by_tags == ["new", "new"]


async def test_an_unknown_strategy_header_is_a_400(proxy_api: Client, echo_backends: StartEcho) -> None:
    backend = await echo_backends("a")
    await register(proxy_api, backend.port)

    response = await proxy_api.get("/proxy/orders/", headers={"X-Maxine-Strategy": "fastest-please"})

    await expect_error(response, 400, "unknown_strategy")
    assert backend.seen == []


async def test_discovery_guards_apply_to_the_proxy(proxy_api: Client, echo_backends: StartEcho) -> None:
    backend = await echo_backends("a")
    await register(proxy_api, backend.port)
    asked: list[tuple[str, str | None, str | None]] = []

    def billing_only(service_name: str, caller: str | None, client_ip: str | None) -> None:
        asked.append((service_name, caller, client_ip))
        if caller != "billing":
            raise Forbidden(f"{caller!r} may not call {service_name!r}.")

    proxy_api.app[OPERATIONS_KEY].discovery_guards.append(billing_only)

    refused = await proxy_api.get("/proxy/orders/?caller=billing", headers={"X-Maxine-Caller": "shipping"})
    allowed = await proxy_api.get("/proxy/orders/", headers={"X-Maxine-Caller": "billing"})

    await expect_error(refused, 403, "forbidden")
    assert allowed.status == 200
    assert asked == [("orders", "shipping", "127.0.0.1"), ("orders", "billing", "127.0.0.1")]
    assert [seen.target for seen in backend.seen] == ["/"]


async def test_an_unknown_service_is_a_404(proxy_api: Client) -> None:
    response = await proxy_api.get("/proxy/nobody/anything")

    await expect_error(response, 404, "service_not_found")


async def test_a_service_with_only_unhealthy_instances_is_a_503(
    proxy_api: Client, proxy_registry: Registry, echo_backends: StartEcho
) -> None:
    backend = await echo_backends("a")
    node_id = await register(proxy_api, backend.port)
    proxy_registry.set_health(proxy_registry.resolve(node_id), healthy=False, reason="test")

    response = await proxy_api.get("/proxy/orders/")

    await expect_error(response, 503, "no_healthy_instance")
    assert backend.seen == []


async def test_a_body_declared_over_the_limit_is_a_413_without_reaching_a_backend(
    proxy_api: Client, echo_backends: StartEcho
) -> None:
    backend = await echo_backends("a")
    await register(proxy_api, backend.port)

    response = await proxy_api.post("/proxy/orders/upload", data=b"x" * (8 * 1024 * 1024 + 1))

    await expect_error(response, 413, "payload_too_large")
    assert backend.seen == []


async def test_a_streamed_body_that_grows_over_the_limit_is_a_413(proxy_api: Client, echo_backends: StartEcho) -> None:
    async def read_all(request: web.Request) -> web.StreamResponse:
        async for _ in request.content.iter_any():
            pass
        return web.Response(text="read it all")

    async def one_mib_chunks() -> AsyncIterator[bytes]:
        for _ in range(9):
            yield b"x" * (1024 * 1024)

    backend = await echo_backends("a", handler=read_all)
    await register(proxy_api, backend.port)

    response = await proxy_api.post("/proxy/orders/upload", data=one_mib_chunks())

    await expect_error(response, 413, "payload_too_large")


# Backends that fail, and what the registry learns from them.


async def test_outcomes_reach_the_breaker(
    proxy_api: Client, proxy_registry: Registry, echo_backends: StartEcho
) -> None:
    statuses = iter([500, 200])

    async def fails_once(request: web.Request) -> web.StreamResponse:
        return web.Response(status=next(statuses), text="answer")

    backend = await echo_backends("a", handler=fails_once)
    node_id = await register(proxy_api, backend.port)

    first = await proxy_api.get("/proxy/orders/")
    after_failure = proxy_registry.breaker_view(node_id)
    second = await proxy_api.get("/proxy/orders/")
    after_success = proxy_registry.breaker_view(node_id)

    assert (first.status, await first.text()) == (500, "answer")
    assert second.status == 200
    assert (after_failure["failures"], after_failure["totalFailures"]) == (1, 1)
    assert (after_success["failures"], after_success["totalSuccesses"]) == (0, 1)


async def test_repeated_failures_open_the_breaker_and_then_the_proxy_answers_503(
    proxy_api: Client, proxy_registry: Registry, echo_backends: StartEcho
) -> None:
    async def always_500(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="broken")

    backend = await echo_backends("a", handler=always_500)
    node_id = await register(proxy_api, backend.port)
    threshold = proxy_registry.breaker_policy.failure_threshold

    statuses = [(await proxy_api.get("/proxy/orders/")).status for _ in range(threshold)]
    after_open = await proxy_api.get("/proxy/orders/")

    assert statuses == [500] * threshold
    assert proxy_registry.breaker_view(node_id)["state"] == "open"
    await expect_error(after_open, 503, "no_healthy_instance")
    assert len(backend.seen) == threshold


async def test_a_backend_that_never_answers_is_a_504_and_a_recorded_failure(
    proxy_api: Client, proxy_registry: Registry, raw_backends: StartRaw
) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        await reader.read()  # until the proxy gives up and closes

    backend = await raw_backends(hang)
    node_id = await register(proxy_api, backend.port)

    response = await proxy_api.get("/proxy/orders/")

    await expect_error(response, 504, "gateway_timeout")
    assert proxy_registry.breaker_view(node_id)["failures"] == 1


async def test_a_backend_that_hangs_up_without_answering_is_a_502(
    proxy_api: Client, proxy_registry: Registry, raw_backends: StartRaw
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)

    backend = await raw_backends(hang_up)
    node_id = await register(proxy_api, backend.port)

    response = await proxy_api.get("/proxy/orders/")

    await expect_error(response, 502, "bad_gateway")
    assert proxy_registry.breaker_view(node_id)["failures"] == 1


async def test_an_answer_that_is_not_http_is_a_502(proxy_api: Client, raw_backends: StartRaw) -> None:
    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    backend = await raw_backends(garble)
    await register(proxy_api, backend.port)

    response = await proxy_api.get("/proxy/orders/")

    await expect_error(response, 502, "bad_gateway")


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-this",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly-this\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_an_answer_cut_off_midway_ends_the_client_connection_early(
    proxy_api: Client, proxy_registry: Registry, raw_backends: StartRaw, head: bytes
) -> None:
    async def cut_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(head)
        await writer.drain()

    backend = await raw_backends(cut_off)
    node_id = await register(proxy_api, backend.port)

    response = await proxy_api.get("/proxy/orders/")

    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert proxy_registry.breaker_view(node_id)["failures"] == 1


async def test_a_client_that_leaves_midway_frees_the_instance_and_is_not_held_against_it(
    proxy_api: Client, proxy_registry: Registry, echo_backends: StartEcho
) -> None:
    backend_stopped = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(1000):
                await response.write(b"x" * 65536)
                await asyncio.sleep(0.01)
        except ConnectionError:
            pass
        finally:
            backend_stopped.set()
        return response

    backend = await echo_backends("a", handler=endless)
    node_id = await register(proxy_api, backend.port)

    response = await proxy_api.get("/proxy/orders/endless")
    await response.content.readexactly(10)
    response.close()
    # The proxy lets go of the backend's connection too, and reports the attempt on its way out.
    await asyncio.wait_for(backend_stopped.wait(), BACKEND_IO_TIMEOUT)

    assert proxy_registry.resolve(node_id).inflight == 0
    assert proxy_registry.breaker_view(node_id)["failures"] == 0
    async with proxy_api.get("/proxy/orders/again") as again:
        assert again.status == 200


async def test_a_refused_get_is_retried_on_another_instance(
    proxy_api: Client, proxy_registry: Registry, echo_backends: StartEcho
) -> None:
    dead_node = await register(proxy_api, unused_port())
    live = await echo_backends("live")
    await register(proxy_api, live.port)

    response = await proxy_api.get("/proxy/orders/items")

    assert response.status == 200
    assert response.headers["X-Backend"] == "live"
    assert proxy_registry.breaker_view(dead_node)["failures"] == 1


async def test_a_refused_post_with_a_body_is_a_502_and_not_retried(
    proxy_api: Client, proxy_registry: Registry, echo_backends: StartEcho
) -> None:
    dead_node = await register(proxy_api, unused_port())
    live = await echo_backends("live")
    await register(proxy_api, live.port)

    response = await proxy_api.post("/proxy/orders/items", data=b'{"item": 1}')

    await expect_error(response, 502, "bad_gateway")
    assert live.seen == []
    assert proxy_registry.breaker_view(dead_node)["failures"] == 1


async def test_a_post_is_never_sent_twice(proxy_api: Client, proxy_registry: Registry, raw_backends: StartRaw) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)

    first = await raw_backends(hang_up)
    second = await raw_backends(hang_up)
    first_node = await register(proxy_api, first.port)
    await register(proxy_api, second.port)

    response = await proxy_api.post("/proxy/orders/pay", data=b'{"amount": 10}')

    await expect_error(response, 502, "bad_gateway")
    assert (first.connections, second.connections) == (1, 0)
    assert proxy_registry.breaker_view(first_node)["failures"] == 1


async def test_an_ipv6_backend_is_reached_at_its_bracketed_address(proxy_api: Client, echo_backends: StartEcho) -> None:
    backend = await echo_backends("v6", host="::1")
    await register(proxy_api, backend.port, host="::1")

    response = await proxy_api.get("/proxy/orders/here")

    assert response.status == 200
    assert backend.seen[0].headers["Host"] == f"[::1]:{backend.port}"


# Settings.


def test_proxy_settings_come_from_the_environment() -> None:
    environ = {
        "PROXY_CONNECT_TIMEOUT": "0.25",
        "PROXY_TIMEOUT": "90",
        "PROXY_MAX_BODY_BYTES": "1048576",
        "PROXY_MAX_CONNECTIONS": "32",
    }

    settings = load_settings([], environ=environ)

    assert (settings.proxy_connect_timeout, settings.proxy_timeout) == (0.25, 90.0)
    assert (settings.proxy_max_body_bytes, settings.proxy_max_connections) == (1048576, 32)


@pytest.mark.parametrize(
    ("environ", "mentions"),
    [
        ({"PROXY_TIMEOUT": "0"}, "proxy_timeout"),
        ({"PROXY_CONNECT_TIMEOUT": "-1"}, "proxy_connect_timeout"),
        ({"PROXY_MAX_BODY_BYTES": "0"}, "proxy_max_body_bytes"),
        ({"PROXY_MAX_CONNECTIONS": "0"}, "proxy_max_connections"),
    ],
)
def test_proxy_settings_out_of_range_stop_the_start(environ: dict[str, str], mentions: str) -> None:
    with pytest.raises(SettingsError, match=mentions):
        load_settings([], environ=environ)
