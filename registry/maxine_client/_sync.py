"""
The blocking client: ``AsyncMaxineClient`` run on a private event loop in a daemon thread.

The registry logic exists once, in the asynchronous client. This module only carries calls across
threads: each method hands a coroutine to the private loop and blocks until it is done, so results
and exceptions reach the caller's thread unchanged. Keep-alive loops run on the private loop as
well, which is the point for a program without asyncio: its service keeps heartbeating while its
own threads are busy or blocked.

Lifecycle is explicit: the thread and loop start in the constructor, and ``close()`` cancels what
still runs on the loop, closes the session, stops the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from maxine_client._client import AsyncMaxineClient
from maxine_client._config import DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, DEFAULT_RETRIES, DEFAULT_TIMEOUT
from maxine_client._keepalive import AsyncKeepAlive
from maxine_client._models import Instance, Lease, Registration
from maxine_client._udp import HTTP

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread, and the way to run coroutines on it."""

    def __init__(self, *, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def closed(self) -> bool:
        return self._closed

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the private loop and block until it returns or raises."""
        if self._closed:
            coroutine.close()  # never awaited: close it so that Python does not warn about it
            raise RuntimeError("The client is closed; create a new one.")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("A blocking client call was made from its own loop thread; it would never return.")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        if self._closed:
            return
        self.call(self._cancel_remaining_tasks())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @staticmethod
    async def _cancel_remaining_tasks() -> None:
        # Keep-alive loops the caller did not stop end here, before their loop goes away under them.
        current = asyncio.current_task()
        remaining = [task for task in asyncio.all_tasks() if task is not current]
        for task in remaining:
            task.cancel()
        if remaining:
            await asyncio.wait(remaining)


class KeepAlive:
    """The blocking handle of a keep-alive loop that runs on the client's private loop."""

    def __init__(self, *, handle: AsyncKeepAlive, runner: _LoopThread) -> None:
        self._handle = handle
        self._runner = runner

    def __repr__(self) -> str:
        handle = self._handle
        return (
            f"{type(self).__name__}(node_id={handle.registration.node_id!r}, interval={handle.interval!r}, "
            f"state={handle.state!r}, running={handle.running!r})"
        )

    @property
    def registration(self) -> Registration:
        return self._handle.registration

    @property
    def interval(self) -> float:
        return self._handle.interval

    @property
    def state(self) -> str:
        return self._handle.state

    @property
    def running(self) -> bool:
        return self._handle.running

    @property
    def reregistrations(self) -> int:
        return self._handle.reregistrations

    def stop(self) -> None:
        """End the loop and wait until it has ended; after ``close()`` the loop is gone already."""
        if not self._runner.closed:
            self._runner.call(self._handle.stop())


class MaxineClient:
    """
    A blocking client of one Maxine registry, with the methods and arguments of ``AsyncMaxineClient``.

    Use it as a context manager, or call ``close()``; it is safe to share between threads.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        udp_host: str | None = None,
        udp_port: int | None = None,
        udp_key: str | bytes | None = None,
    ) -> None:
        # The async client opens its session lazily, on the private loop, so building it here is safe.
        self._client = AsyncMaxineClient(
            base_url,
            token=token,
            timeout=timeout,
            retries=retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            udp_host=udp_host,
            udp_port=udp_port,
            udp_key=udp_key,
        )
        self._runner = _LoopThread(name=f"maxine-client {self._client.base_url}")

    def __repr__(self) -> str:
        client = self._client
        return (
            f"{type(self).__name__}(base_url={client.base_url!r}, timeout={client.timeout!r}, "
            f"retries={client.retry_policy.retries!r})"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        return self._client.base_url

    def close(self) -> None:
        """Stop keep-alive loops still running, close the session, end the thread; closing twice is harmless."""
        if self._runner.closed:
            return
        self._runner.call(self._client.close())
        self._runner.close()

    def register(
        self,
        service_name: str,
        *,
        host: str,
        port: int,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
    ) -> Registration:
        return self._runner.call(self._client.register(service_name, host=host, port=port, metadata=metadata, ttl=ttl))

    def heartbeat(self, node_id: str) -> Lease:
        return self._runner.call(self._client.heartbeat(node_id))

    def deregister(self, node_id: str) -> None:
        self._runner.call(self._client.deregister(node_id))

    def discover(
        self,
        service_name: str,
        *,
        strategy: str | None = None,
        version: str | None = None,
        tags: Iterable[str] | str | None = None,
    ) -> Instance:
        return self._runner.call(self._client.discover(service_name, strategy=strategy, version=version, tags=tags))

    def health(self) -> dict[str, Any]:
        return self._runner.call(self._client.health())

    def keep_alive(
        self, registration: Registration, *, interval: float | None = None, transport: str = HTTP
    ) -> KeepAlive:
        async def start() -> AsyncKeepAlive:
            return self._client.keep_alive(registration, interval=interval, transport=transport)

        return KeepAlive(handle=self._runner.call(start()), runner=self._runner)

    @contextlib.contextmanager
    def registered(
        self,
        service_name: str,
        *,
        host: str,
        port: int,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        interval: float | None = None,
        transport: str = HTTP,
    ) -> Iterator[KeepAlive]:
        """``AsyncMaxineClient.registered``, driven from this thread: the same steps on the way in and out."""
        manager = self._client.registered(
            service_name, host=host, port=port, metadata=metadata, ttl=ttl, interval=interval, transport=transport
        )
        handle = self._runner.call(manager.__aenter__())
        try:
            yield KeepAlive(handle=handle, runner=self._runner)
        except BaseException as exc:
            if not self._runner.call(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._runner.call(manager.__aexit__(None, None, None))
