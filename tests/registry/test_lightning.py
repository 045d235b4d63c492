"""
The lightning path at the byte level: framing, pipelining, hand-over to aiohttp, limits, timeouts.

The API tests already run through both transports; these tests speak raw HTTP/1.1 over a socket
to check what only a lean front end can get wrong.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from aiohttp import web

from maxine_registry.http import create_app
from maxine_registry.http.lightning import MAX_HEADER_BYTES, LightningServer, _query
from maxine_registry.operations import Operations
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings

LOOPBACK = "127.0.0.1"


class Front:
    """A lightning listener over the full app, and raw connections to it."""

    def __init__(self, lightning: LightningServer, port: int) -> None:
        self.lightning = lightning
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(LOOPBACK, self.port)


@pytest.fixture
async def front_factory(registry: Registry, settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[asyncio.Server, web.AppRunner, LightningServer]] = []

    async def start(**options: Any) -> Front:
        operations = Operations(registry=registry, settings=settings)
        app = create_app(operations)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        assert runner.server is not None
        lightning = LightningServer(
            operations=operations,
            fallback=runner.server,
            serve_hot_routes=True,
            **options,
        )
        listener = await asyncio.get_running_loop().create_server(lightning, LOOPBACK, 0)
        started.append((listener, runner, lightning))
        return Front(lightning, listener.sockets[0].getsockname()[1])

    yield start

    for listener, runner, lightning in started:
        listener.close()
        lightning.close_idle()
        await lightning.drain(grace=2)
        await runner.cleanup()


@pytest.fixture
async def front(front_factory: Callable[..., Any]) -> Front:
    result: Front = await front_factory()
    return result


def request(method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None) -> bytes:
    payload = b"" if body is None else orjson.dumps(body)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {LOOPBACK}", f"Content-Length: {len(payload)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *header_lines = head.decode().split("\r\n")[:-2]
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in header_lines}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return int(status_line.split(" ")[1]), headers, orjson.loads(body) if body else None


REGISTRATION = {"serviceName": "orders", "host": "10.0.0.1", "port": 80}


async def test_pipelined_requests_are_answered_in_order(front: Front) -> None:
    reader, writer = await front.connect()

    writer.write(
        request("POST", "/register", REGISTRATION)
        + request("GET", "/discover?serviceName=orders")
        + request("POST", "/heartbeat", {"nodeId": "orders:10.0.0.1:80"})
        + request("GET", "/health")
    )
    answers = [await read_response(reader) for _ in range(4)]
    writer.close()

    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert answers[0][2]["nodeId"] == "orders:10.0.0.1:80"
    assert answers[1][2]["address"] == "10.0.0.1:80"
    assert answers[2][2]["ttl"] == 30.0
    assert answers[3][2]["nodes"] == 1


async def test_a_request_split_across_many_writes_is_reassembled(front: Front) -> None:
    reader, writer = await front.connect()
    raw = request("POST", "/register", REGISTRATION)

    for index in range(len(raw)):
        writer.write(raw[index : index + 1])
        await writer.drain()
    status, _, body = await read_response(reader)
    writer.close()

    assert status == 200
    assert body["nodeId"] == "orders:10.0.0.1:80"


@pytest.mark.parametrize("seed", range(6))
async def test_pipelined_requests_cut_at_random_bytes_get_the_same_answers(front: Front, seed: int) -> None:
    # However the network cuts a stream of requests, hot or not, each gets the answer it gets whole.
    stream = b"".join(
        [
            request("POST", "/register", {**REGISTRATION, "port": 90 + seed}),
            request("GET", f"/discover?serviceName=orders&seed={seed}"),
            request("POST", "/heartbeat", {"nodeId": f"orders:10.0.0.1:{90 + seed}"}),
            request("GET", "/discover?serviceName=orders&seed=x"),
            request("POST", "/heartbeat", {"nodeId": "orders:10.0.0.1:1"}),
            request("GET", "/health"),
            request("GET", f"/discover?serviceName=orders&seed={seed}"),
            request("GET", "/servers"),
        ]
    )
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), 40))

    reader, writer = await front.connect()
    for start, end in itertools.pairwise([0, *cuts, len(stream)]):
        writer.write(stream[start:end])
        await writer.drain()
    answers = [await read_response(reader) for _ in range(8)]
    writer.close()

    assert [status for status, _, _ in answers] == [200, 200, 200, 200, 404, 200, 200, 200]
    assert answers[1][2]["address"] == answers[6][2]["address"] == f"10.0.0.1:{90 + seed}"
    assert answers[4][2]["code"] == "not_registered"
    assert answers[7][2]["services"]["orders"]["nodes"][0]["address"] == f"10.0.0.1:{90 + seed}"


async def test_a_repeated_head_is_answered_from_its_own_body_and_state(front: Front, registry: Registry) -> None:
    # The same head bytes are parsed once; what varies (the body, the registry) must still count.
    reader, writer = await front.connect()
    for port in (81, 82):
        writer.write(request("POST", "/register", {**REGISTRATION, "port": port}))
        assert (await read_response(reader))[0] == 200

    discover = request("GET", "/discover?serviceName=orders")
    writer.write(discover * 4)
    addresses = [(await read_response(reader))[2]["address"] for _ in range(4)]
    heartbeats = []
    for node_id in ("orders:10.0.0.1:81", "orders:10.0.0.1:99", "orders:10.0.0.1:82"):
        writer.write(request("POST", "/heartbeat", {"nodeId": node_id}))
        heartbeats.append(await read_response(reader))
    registry.deregister("orders:10.0.0.1:81")
    writer.write(discover)
    after = await read_response(reader)
    good = request("POST", "/heartbeat", {"nodeId": "orders:10.0.0.1:82"})
    writer.write(good[:-1] + b"]")
    bad_json_same_head = await read_response(reader)
    writer.close()

    assert sorted(addresses) == ["10.0.0.1:81", "10.0.0.1:81", "10.0.0.1:82", "10.0.0.1:82"]
    assert [(status, body["nodeId"] if status == 200 else body["code"]) for status, _, body in heartbeats] == [
        (200, "orders:10.0.0.1:81"),
        (404, "not_registered"),
        (200, "orders:10.0.0.1:82"),
    ]
    assert after[2]["address"] == "10.0.0.1:82"
    assert (bad_json_same_head[0], bad_json_same_head[2]["code"]) == (400, "invalid_json")


async def test_a_repeated_head_from_another_peer_is_hashed_by_that_peer(front: Front, registry: Registry) -> None:
    # ip-hash reads the caller's address, which is not in the head: two peers, one head, their own picks.
    reader, writer = await front.connect()
    for port in range(80, 90):
        writer.write(request("POST", "/register", {**REGISTRATION, "port": port}))
        assert (await read_response(reader))[0] == 200
    writer.close()
    discover = request("GET", "/discover?serviceName=orders&loadBalancing=ip-hash")

    picks: dict[str, set[str]] = {}
    for peer in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"):
        reader, writer = await asyncio.open_connection(LOOPBACK, front.port, local_addr=(peer, 0))
        for _ in range(3):
            writer.write(discover)
            picks.setdefault(peer, set()).add((await read_response(reader))[2]["address"])
        writer.close()

    assert all(len(addresses) == 1 for addresses in picks.values())
    assert len(set().union(*picks.values())) > 1


async def test_other_routes_are_handed_to_aiohttp_without_losing_a_byte(front: Front, registry: Registry) -> None:
    reader, writer = await front.connect()

    writer.write(
        request("POST", "/register", REGISTRATION)
        + request("GET", "/servers")
        + request("GET", "/discover?serviceName=orders")
        + request("GET", "/metrics")
    )
    answers = [await read_response(reader) for _ in range(4)]
    writer.close()

    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert list(answers[1][2]["services"]) == ["orders"]
    assert answers[2][2]["nodeId"] == "orders:10.0.0.1:80"
    assert answers[3][2]["requests"] == 4


async def test_chunked_bodies_are_served_through_aiohttp(front: Front) -> None:
    reader, writer = await front.connect()
    body = orjson.dumps(REGISTRATION)
    head = b"POST /register HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = (
        b"".join(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in (body[:10], body[10:])) + b"0\r\n\r\n"
    )

    writer.write(head + chunks)
    status, _, answer = await read_response(reader)
    writer.close()

    assert status == 200
    assert answer["nodeId"] == "orders:10.0.0.1:80"


@pytest.mark.parametrize(
    "raw",
    [
        b"NONSENSE\r\n\r\n",
        b"POST /register HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
        b"POST /register HTTP/1.1\r\nHo st: x\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /register HTTP/9.9\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["no-request-line", "extra-token", "length-not-a-number", "space-in-header-name", "bad-version"],
)
async def test_malformed_requests_get_a_json_400_and_change_nothing(
    front: Front, registry: Registry, raw: bytes
) -> None:
    reader, writer = await front.connect()

    writer.write(raw)
    status, headers, body = await read_response(reader)
    writer.close()

    assert status == 400
    assert headers["content-type"] == "application/json"
    assert body["code"] == "bad_request"
    assert registry.node_count == 0


async def test_an_oversized_body_is_refused_before_it_is_read(front: Front, settings: Settings) -> None:
    reader, writer = await front.connect()
    too_long = settings.max_body_bytes + 1

    writer.write(f"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: {too_long}\r\n\r\n".encode())
    status, headers, body = await read_response(reader)
    closed = await asyncio.wait_for(reader.read(), 5)

    assert status == 413
    assert body["code"] == "payload_too_large"
    assert headers["connection"] == "close"
    assert closed == b""


async def test_oversized_headers_are_refused_with_431(front: Front) -> None:
    reader, writer = await front.connect()

    writer.write(b"GET /health HTTP/1.1\r\nX-Filler: " + b"a" * (MAX_HEADER_BYTES + 10))
    status, _, body = await read_response(reader)

    assert status == 431
    assert body["code"] == "headers_too_large"


async def test_a_slow_client_is_timed_out_with_408(front_factory: Callable[..., Any]) -> None:
    front = await front_factory(request_timeout=0.3)
    reader, writer = await front.connect()

    writer.write(b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
    status, _, body = await read_response(reader)

    assert status == 408
    assert body["code"] == "request_timeout"


async def test_idle_keep_alive_connections_are_closed(front_factory: Callable[..., Any]) -> None:
    front = await front_factory(keepalive_timeout=0.3)
    reader, writer = await front.connect()
    writer.write(request("GET", "/health"))
    await read_response(reader)

    rest = await asyncio.wait_for(reader.read(), 5)

    assert rest == b""


async def test_connection_close_and_http_1_0_end_the_connection(front: Front) -> None:
    for raw in (
        request("GET", "/health", headers={"Connection": "close"}),
        b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n",
    ):
        reader, writer = await front.connect()
        writer.write(raw)
        status, headers, _ = await read_response(reader)
        assert status == 200
        assert headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_connections_past_the_limit_get_503(front_factory: Callable[..., Any]) -> None:
    front = await front_factory(max_connections=2)
    kept = [await front.connect() for _ in range(2)]
    for reader, writer in kept:
        writer.write(request("GET", "/health"))
        await read_response(reader)

    reader, writer = await front.connect()
    status, _, body = await read_response(reader)

    assert status == 503
    assert body["code"] == "too_many_connections"
    for _, kept_writer in kept:
        kept_writer.close()


async def test_a_client_that_does_not_read_answers_stops_being_read(front: Front) -> None:
    # Thousands of pipelined requests from a client that reads nothing: the server must pause
    # reading rather than buffer answers without bound, and still serve the client once it reads.
    reader, writer = await front.connect()
    count = 20_000
    batch = request("GET", "/health") * 1000

    async def send() -> None:
        for _ in range(count // 1000):
            writer.write(batch)
            await writer.drain()

    sender = asyncio.create_task(send())
    await asyncio.sleep(0.5)
    answers = 0
    while answers < count:
        await read_response(reader)
        answers += 1
    await asyncio.wait_for(sender, 10)
    writer.close()

    assert answers == count


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /servers HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"POST /config/set HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["bad-header-after-hand-over", "bad-chunk-size"],
)
async def test_malformed_requests_for_aiohttp_routes_also_get_json(front: Front, raw: bytes) -> None:
    reader, writer = await front.connect()

    writer.write(raw)
    status, headers, body = await read_response(reader)
    writer.close()

    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert body["code"] == "bad_request"
    # One line that says what is wrong, without the offending bytes quoted back.
    assert "\n" not in body["error"]
    assert "zz" not in body["error"] and "Bad Header Line" not in body["error"]


async def test_headers_too_large_for_aiohttp_get_431_without_an_echo(front: Front) -> None:
    # Once a connection was handed to aiohttp, its header limits answer as the lean path does,
    # and never quote the header back (it may be a token).
    reader, writer = await front.connect()
    writer.write(request("GET", "/servers"))
    assert (await read_response(reader))[0] == 200

    writer.write(request("GET", "/servers", headers={"Authorization": "Bearer SECRET" + "a" * 9000}))
    status, _, body = await read_response(reader)
    writer.close()

    assert (status, body["code"]) == (431, "headers_too_large")
    assert "SECRET" not in body["error"]


async def test_a_client_hanging_up_mid_body_is_not_logged_as_a_failure(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    _reader, writer = await front.connect()
    writer.write(b'POST /config/set HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":')
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.sleep(0.2)

    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_body_that_never_arrives_on_an_aiohttp_route_gets_408(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("maxine_registry.http.common.BODY_TIMEOUT", 0.3)
    reader, writer = await front.connect()
    writer.write(
        b"POST /config/set HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )

    status, headers, body = await read_response(reader)
    writer.close()

    assert (status, body["code"]) == (408, "request_timeout")
    assert headers.get("connection") == "close"


async def test_a_request_trickled_byte_by_byte_still_times_out(front_factory: Callable[..., Any]) -> None:
    front = await front_factory(request_timeout=0.5)
    reader, writer = await front.connect()

    async def trickle() -> None:
        for _ in range(40):
            writer.write(b"X-Slow: 1\r\n")
            await asyncio.sleep(0.1)

    writer.write(b"POST /register HTTP/1.1\r\nHost: x\r\n")
    sender = asyncio.create_task(trickle())
    status, _, body = await read_response(reader)
    sender.cancel()

    assert status == 408
    assert body["code"] == "request_timeout"


@pytest.mark.parametrize(
    "target",
    [
        b"/discover?serviceName=orders&tags=a,b&version=1.0",
        b"/discover?a=1&a=2&b=&c",
        b"/discover?x=%20y&z=a+b",
        b"/discover?&&a=1",
        b"/discover?a==b;c",
        b"/discover?name=%E2%9C%93",
        b"/discover",
    ],
)
def test_the_query_reads_as_aiohttp_reads_it(target: bytes) -> None:
    raw = target.partition(b"?")[2].decode()
    expected: dict[str, str] = {}
    for name, value in parse_qsl(raw, keep_blank_values=True):
        expected.setdefault(name, value)

    assert _query(target) == expected


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n", 200),
        (
            b"GET /discover?serviceName=orders HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            404,
        ),
    ],
    ids=["unknown-protocol", "websocket-on-a-plain-route"],
)
async def test_an_upgrade_on_a_hot_route_is_answered_by_aiohttp(front: Front, raw: bytes, status: int) -> None:
    # httptools stops at an upgrade with an exception of its own; the lean path hands the request over.
    reader, writer = await front.connect()

    writer.write(raw)
    answer = await read_response(reader)
    writer.close()

    assert answer[0] == status
    assert answer[1]["content-type"].startswith("application/json")
