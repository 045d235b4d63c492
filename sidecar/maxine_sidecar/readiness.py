"""
Asking the app whether it is ready to take traffic.

The sidecar registers the pod only while the app says it is ready, so this check decides when the
pod enters discovery and when it leaves. It follows what a Kubernetes readiness probe does, so that
an app needs no second endpoint: an HTTP GET whose status from 200 to 399 means ready, answered
within a timeout, redirects not followed (a redirect could lead out of the pod). Without a URL the
check is a TCP connection to the address the sidecar registers: an app that accepts connections
there is one other services can reach.

A check never raises: every way of failing (refused, reset, timed out, a 5xx) is "not ready", with
a short reason the sidecar logs when readiness changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import aiohttp

logger = logging.getLogger(__name__)

# Statuses that mean ready, as for a Kubernetes httpGet probe.
READY_STATUSES = range(200, 400)


@dataclass(frozen=True, slots=True)
class Readiness:
    """The outcome of one check: ready or not, and why not."""

    ready: bool
    reason: str


class ReadinessProbe:
    """
    Checks the app's readiness by HTTP GET on ``url``, or by a TCP connection to ``host:port`` without a URL.

    The HTTP session is opened on the first check (inside the running loop) and closed by ``close()``.
    """

    def __init__(self, *, url: str | None, host: str, port: int, timeout: float) -> None:
        self.url = url
        self.host = host
        self.port = port
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        target = self.url if self.url is not None else f"tcp {self.host}:{self.port}"
        return f"{type(self).__name__}(target={target!r}, timeout={self.timeout!r})"

    @property
    def target(self) -> str:
        """What is checked, for log lines."""
        return self.url if self.url is not None else f"tcp://{self.host}:{self.port}"

    async def check(self) -> Readiness:
        try:
            if self.url is None:
                return await self._check_port()
            return await self._check_url(self.url)
        except TimeoutError:
            return Readiness(ready=False, reason=f"no answer within {self.timeout} s")
        except (aiohttp.ClientError, OSError) as exc:
            return Readiness(ready=False, reason=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _check_url(self, url: str) -> Readiness:
        if self._session is None:
            # One connection is plenty for one check every few seconds; the environment's proxies are ignored
            # (aiohttp's default), so a check never leaves the pod through a proxy.
            # TODO: LATER: an https:// check verifies the app's certificate like any client; an app on loopback
            # with a self-signed one needs a setting to trust it (a CA file), which does not exist yet.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), connector=aiohttp.TCPConnector(limit=1)
            )
        async with self._session.get(url, allow_redirects=False) as response:
            # The body is not read: its status is the whole answer, and an app may send a large page.
            if response.status in READY_STATUSES:
                return Readiness(ready=True, reason=f"status {response.status}")
            return Readiness(ready=False, reason=f"status {response.status}")

    async def _check_port(self) -> Readiness:
        async with asyncio.timeout(self.timeout):
            _, writer = await asyncio.open_connection(self.host, self.port)
        writer.close()
        # The app may reset a connection that sent nothing; it did accept it, which is the answer.
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return Readiness(ready=True, reason="port open")
