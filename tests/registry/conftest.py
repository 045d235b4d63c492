"""
Fixtures for the registry's own tests: a registry on a hand-driven clock, and the HTTP app in-process.

Health checks need real time and real sockets instead: a registry on the real clock, a started
``HealthChecker``, and local HTTP and TCP services on loopback that a test turns bad, slow, off and on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import bcrypt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from yarl import URL

from maxine_registry.auth import SERVICE
from maxine_registry.auth_protocol import Authenticator
from maxine_registry.events import EventBus
from maxine_registry.health_checks import HealthChecker
from maxine_registry.http import create_app
from maxine_registry.http.app import has_request_middleware
from maxine_registry.http.common import OPERATIONS_KEY
from maxine_registry.http.lightning import LightningServer
from maxine_registry.http.tracing import install as install_tracing
from maxine_registry.identity import ADMIN, READ_ONLY, Identity
from maxine_registry.operations import Operations, RequestStats
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings
from maxine_registry.udp import UdpHeartbeatServer


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(events=EventBus(wall=lambda: clock.now), clock=clock, wall=lambda: clock.now, rng=random.Random(7))


@pytest.fixture
def settings() -> Settings:
    return Settings(max_body_bytes=4096, max_metadata_bytes=1024)


class LightningTestServer(TestServer):
    """The app behind the lightning path, as ``maxine`` serves it: hot routes lean, the rest by aiohttp."""

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        assert self.runner.server is not None
        self.lightning = LightningServer(
            operations=self.app[OPERATIONS_KEY],
            fallback=self.runner.server,
            serve_hot_routes=not has_request_middleware(self.app),
        )
        self.listener = await asyncio.get_running_loop().create_server(self.lightning, self.host, 0)
        self.port = self.listener.sockets[0].getsockname()[1]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self.started and not self.closed:
            self.listener.close()
            self.lightning.close_idle()
            await self.lightning.drain(grace=5)
        await super().close()


@pytest.fixture(params=["aiohttp", "lightning"])
async def api(
    request: pytest.FixtureRequest, registry: Registry, settings: Settings
) -> AsyncIterator[TestClient[object, object]]:
    """
    The full HTTP app over a real socket, on the fake-clock registry.

    Every test that uses it runs twice: through aiohttp alone, and through the lightning path that
    ``maxine`` puts in front, so both transports are held to one contract.
    """
    app = create_app(Operations(registry=registry, settings=settings))
    server = LightningTestServer(app) if request.param == "lightning" else TestServer(app)
    async with TestClient(server) as client:
        yield client


# Health checks: real time, real sockets, loopback only.

LOOPBACK = "127.0.0.1"
WAIT_TIMEOUT = 10.0


async def wait_until(condition: Callable[[], bool], *, what: str, within: float = WAIT_TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail the test, naming ``what``, if it does not hold ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {within:g}s waiting until {what}.")
        await asyncio.sleep(0.02)


class HttpTarget:
    """
    A local HTTP service to probe. It counts the paths asked for and answers as its fields say.

    ``status`` is the answer (200 unless a test turns it to 500); ``delay`` seconds pass before it;
    ``redirect_to`` makes it a 302 there; ``fail_next`` answers that many requests with 500 first.
    ``max_inflight`` is the most requests it ever served at once. ``stop()`` then ``start()`` reopens
    it on the same port.
    """

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.redirect_to = ""
        self.fail_next = 0
        self.hits: Counter[str] = Counter()
        self.inflight = 0
        self.max_inflight = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"HttpTarget(port={self.port}, status={self.status}, requests={self.hits.total()})"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path_qs] += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.fail_next > 0:
                self.fail_next -= 1
                return web.Response(status=500)
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.redirect_to:
                raise web.HTTPFound(self.redirect_to)
            return web.Response(status=self.status, text="checked")
        finally:
            self.inflight -= 1


class TcpTarget:
    """A local TCP listener to probe: it accepts, counts and closes connections; it can close and reopen."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"TcpTarget(port={self.port}, connections={self.connections}, open={self._server is not None})"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.fixture
def live_registry() -> Registry:
    """A registry on the real clock, for health checks against real sockets."""
    return Registry()


@pytest.fixture
async def start_checker(live_registry: Registry) -> AsyncIterator[Callable[..., HealthChecker]]:
    """
    A factory of started health checkers on ``live_registry``; all are stopped at teardown.
    """
    started: list[HealthChecker] = []

    def start(**options: Any) -> HealthChecker:
        health_checker = HealthChecker(registry=live_registry, **options)
        health_checker.start()
        started.append(health_checker)
        return health_checker

    yield start
    for health_checker in started:
        await health_checker.stop()


@pytest.fixture
async def checker(start_checker: Callable[..., HealthChecker]) -> HealthChecker:
    # Async, so that it starts inside the test's running loop.
    return start_checker()


@pytest.fixture
async def http_targets() -> AsyncIterator[Callable[[], Awaitable[HttpTarget]]]:
    """A factory of started ``HttpTarget`` services; all of them are stopped at teardown."""
    started: list[HttpTarget] = []

    async def start() -> HttpTarget:
        target = HttpTarget()
        await target.start()
        started.append(target)
        return target

    yield start
    for target in started:
        await target.stop()


@pytest.fixture
async def http_target(http_targets: Callable[[], Awaitable[HttpTarget]]) -> HttpTarget:
    return await http_targets()


@pytest.fixture
async def tcp_target() -> AsyncIterator[TcpTarget]:
    target = TcpTarget()
    await target.start()
    yield target
    await target.stop()


# The proxy: a registry on the real clock, and backends on loopback, some of them misbehaving on purpose.

BACKEND_HOST = "127.0.0.1"
# Every wait in a backend is bounded, so that a proxy bug fails a test instead of hanging it.
BACKEND_IO_TIMEOUT = 10.0

BackendHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RawBehaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class SeenRequest:
    """A request as a backend received it: the raw path with its query, the headers, the whole body."""

    method: str
    target: str
    headers: CIMultiDictProxy[str]
    body: bytes


class EchoBackend:
    """
    An HTTP service behind the proxy that records each request it gets.

    By default it answers with a JSON description of the request (201 for a POST, 200 otherwise)
    and an ``X-Backend`` header naming it; ``handler`` replaces that answer for one test. ``host``
    may be ``::1`` for an IPv6 backend.
    """

    def __init__(self, name: str, *, handler: BackendHandler | None = None, host: str = BACKEND_HOST) -> None:
        self.name = name
        self.host = host
        self.port = 0
        self.seen: list[SeenRequest] = []
        self._handler = handler
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"EchoBackend(name={self.name!r}, port={self.port}, requests={len(self.seen)})"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self._handler is not None:
            self.seen.append(SeenRequest(request.method, request.raw_path, request.headers, b""))
            return await self._handler(request)
        body = await request.read()
        self.seen.append(SeenRequest(request.method, request.raw_path, request.headers, body))
        description = {
            "backend": self.name,
            "method": request.method,
            "target": request.raw_path,
            "bodyLength": len(body),
            "bodySha256": hashlib.sha256(body).hexdigest(),
        }
        return web.json_response(
            description, status=201 if request.method == "POST" else 200, headers={"X-Backend": self.name}
        )


class RawBackend:
    """
    A TCP listener that speaks only as much HTTP as ``behaviour`` does: it may hang, hang up or garble.

    Each connection runs ``behaviour(reader, writer)`` for at most ``BACKEND_IO_TIMEOUT`` seconds and
    is then closed; ``stop()`` ends the ones still running.
    """

    def __init__(self, behaviour: RawBehaviour) -> None:
        self.port = 0
        self.connections = 0
        self._behaviour = behaviour
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"RawBackend(port={self.port}, connections={self.connections})"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, BACKEND_HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await asyncio.wait_for(self._behaviour(reader, writer), BACKEND_IO_TIMEOUT)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)


@pytest.fixture
def proxy_registry() -> Registry:
    """A registry on the real clock: the proxy measures real response times and waits real timeouts."""
    return Registry(rng=random.Random(7))


@pytest.fixture
def proxy_settings() -> Settings:
    """Short proxy timeouts, so that tests of hanging backends end quickly; a body limit above 5 MiB."""
    return Settings(proxy_connect_timeout=0.5, proxy_timeout=0.5, proxy_max_body_bytes=8 * 1024 * 1024)


@pytest.fixture
async def proxy_api(proxy_registry: Registry, proxy_settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The full HTTP app over a real loopback socket, on the real-clock registry."""
    app = create_app(Operations(registry=proxy_registry, settings=proxy_settings))
    async with TestClient(TestServer(app, host=BACKEND_HOST)) as client:
        yield client


@pytest.fixture
async def echo_backends() -> AsyncIterator[Callable[..., Awaitable[EchoBackend]]]:
    """A factory of started ``EchoBackend`` services, called like ``EchoBackend``; all stop at teardown."""
    started: list[EchoBackend] = []

    async def start(name: str, **options: Any) -> EchoBackend:
        backend = EchoBackend(name, **options)
        await backend.start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


@pytest.fixture
async def raw_backends() -> AsyncIterator[Callable[[RawBehaviour], Awaitable[RawBackend]]]:
    """A factory of started ``RawBackend`` listeners; all stop at teardown."""
    started: list[RawBackend] = []

    async def start(behaviour: RawBehaviour) -> RawBackend:
        backend = RawBackend(behaviour)
        await backend.start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


# Apps with settings of their own (event sinks, limits), on the real clock.


@pytest.fixture
async def app_client() -> AsyncIterator[Callable[..., Awaitable[TestClient[object, object]]]]:
    """
    A factory of in-process apps over real sockets, each on its own real-clock registry.

    ``start(settings, authenticator=...)`` builds the registry as ``maxine`` would from those
    settings; an ``authenticator`` is put on the operations after the app is built, as the auth
    feature does when auth is on. Every app is closed at teardown, which runs its cleanup.
    """
    clients: list[TestClient[object, object]] = []

    async def start(
        settings: Settings | None = None, *, authenticator: Authenticator | None = None
    ) -> TestClient[object, object]:
        settings = settings if settings is not None else Settings()
        registry = Registry(
            events=EventBus(history_size=settings.event_history),
            default_ttl=settings.heartbeat_timeout,
            heartbeat_events=settings.heartbeat_events,
            heartbeat_event_interval=settings.heartbeat_event_interval,
        )
        operations = Operations(registry=registry, settings=settings)
        app = create_app(operations)
        if authenticator is not None:
            operations.authenticator = authenticator
        client: TestClient[object, object] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


# Security and observability: auth on with a token per role, tracing into memory, a local OTLP receiver.

JWT_TEST_SECRET = "a-test-signing-key-that-is-longer-than-32-bytes"
ADMIN_PASSWORD = "correct horse battery staple"
READER_PASSWORD = "the reader's own password"
# bcrypt's cheapest cost: these tests check the logic, not the hashing work.
TEST_BCRYPT_ROUNDS = 4


@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    """bcrypt hashes of the admin's and the reader's passwords, as ADMIN_PASSWORD_HASH and READONLY_PASSWORD_HASH."""
    return {
        user: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=TEST_BCRYPT_ROUNDS)).decode()
        for user, password in (("admin", ADMIN_PASSWORD), ("readonly", READER_PASSWORD))
    }


@pytest.fixture
def auth_settings(password_hashes: dict[str, str]) -> Settings:
    return Settings(
        max_body_bytes=4096,
        auth_enabled=True,
        jwt_secret=JWT_TEST_SECRET,
        admin_password_hash=password_hashes["admin"],
        readonly_password_hash=password_hashes["readonly"],
    )


@pytest.fixture
async def auth_api(
    app_client: Callable[..., Awaitable[TestClient[object, object]]], auth_settings: Settings
) -> TestClient[object, object]:
    """The full app with auth on."""
    return await app_client(auth_settings)


@pytest.fixture
def tokens(auth_api: TestClient[object, object]) -> dict[str, str]:
    """A valid token for each role (admin, read-only, service), signed by ``auth_api``'s own authenticator."""
    authenticator = auth_api.app[OPERATIONS_KEY].authenticator
    assert authenticator is not None
    return {
        role: authenticator.issue(Identity(subject=f"test-{role}", roles=frozenset({role}), verified=True))
        for role in (ADMIN, READ_ONLY, SERVICE)
    }


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced_api(
    registry: Registry, settings: Settings, span_exporter: InMemorySpanExporter
) -> AsyncIterator[TestClient[object, object]]:
    """The full app on the fake-clock registry, its spans kept in ``span_exporter`` as each one ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    app = create_app(Operations(registry=registry, settings=settings))
    install_tracing(app, tracer_provider=provider, owns_provider=False)
    async with TestClient(TestServer(app)) as client:
        yield client
    provider.shutdown()


class OtlpReceiver:
    """A stand-in OpenTelemetry collector on loopback: it accepts ``POST /v1/traces`` and keeps each body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.content_types: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"OtlpReceiver(port={self.port}, received={len(self.bodies)})"

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._receive)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.content_types.append(request.content_type)
        return web.Response(body=b"", content_type="application/x-protobuf")


@pytest.fixture
async def otlp_receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OtlpReceiver]:
    """A started ``OtlpReceiver``; proxy variables are cleared so that spans go straight to it on loopback."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    receiver = OtlpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


# UDP heartbeats: the endpoint on a real loopback socket, over the fake-clock registry.


@pytest.fixture
async def udp_endpoint(
    registry: Registry, clock: FakeClock
) -> AsyncIterator[Callable[..., Awaitable[UdpHeartbeatServer]]]:
    """
    Factory of UDP heartbeat endpoints on free loopback ports, over the fake-clock ``registry``.

    ``start(key=...)`` makes signatures mandatory. Timestamps are checked against ``clock`` (as
    seconds since the epoch), and the reply cap counts its seconds on it too. Stopped at teardown.
    """
    started: list[UdpHeartbeatServer] = []

    async def start(*, key: bytes | None = None, max_skew: float = 30.0) -> UdpHeartbeatServer:
        endpoint = UdpHeartbeatServer(
            registry=registry,
            requests=RequestStats(),
            host=LOOPBACK,
            port=0,
            key=key,
            max_skew=max_skew,
            wall=clock,
            clock=clock,
        )
        await endpoint.start()
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        await endpoint.stop()


class DatagramSender:
    """A plain UDP socket on loopback, as a service without the SDK would use; it keeps what comes back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)

    def __repr__(self) -> str:
        return f"DatagramSender(address={self.sock.getsockname()!r})"

    def send(self, datagram: bytes, *, port: int) -> None:
        self.sock.sendto(datagram, (LOOPBACK, port))

    def replies(self) -> list[bytes]:
        """The datagrams that have arrived so far (loopback delivers at once), without waiting."""
        received = []
        while True:
            try:
                received.append(self.sock.recv(2048))
            except BlockingIOError:
                return received

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def datagram_sender() -> Iterator[DatagramSender]:
    sender = DatagramSender()
    yield sender
    sender.close()
