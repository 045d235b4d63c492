"""
A small Kubernetes API client for what kopf does not do for the operator: mesh objects, EndpointSlices, discovery.

kopf watches and patches the resources it handles with its own client. The operator also has to
create and patch objects of other kinds (Istio, Linkerd, Gateway API, SMI), read EndpointSlices
and ask discovery whether a mesh's CRDs are installed. Rather than pull in a second, heavy client
library, this module speaks the few REST calls needed over aiohttp, with the same credentials kopf
logged in with (a ``kopf.ConnectionInfo``, set by the operator's login handler).

Writes are plain merge patches after a read, not server-side apply: they work with every API
server version and with the test emulator, and each object has one writer (the operator), so
field ownership buys nothing here.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """A Kubernetes API call that failed; ``status`` is None when no answer came."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def resource_path(
    *, group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """The REST path of a collection or an object: ``/apis/g/v/namespaces/ns/plural/name`` (``/api/v1`` for core)."""
    root = f"/apis/{group}/{version}" if group else f"/api/{version}"
    path = root + (f"/namespaces/{urllib.parse.quote(namespace)}" if namespace else "") + f"/{plural}"
    return path + (f"/{urllib.parse.quote(name)}" if name else "")


class KubeClient:
    """The operator's own calls to the API server; ``connect(info)`` before use, ``close()`` at the end."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, discovery_ttl: float = 60.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.discovery_ttl = discovery_ttl
        self.server: str | None = None
        self._session: aiohttp.ClientSession | None = None
        # (group, version) -> (when it was read, plurals served); discovery changes rarely.
        self._discovery: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}

    def __repr__(self) -> str:
        return f"KubeClient(server={self.server!r})"

    async def connect(self, info: kopf.ConnectionInfo) -> None:
        """Use these credentials from now on (a re-login replaces the session)."""
        await self.close()
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
            headers=info.as_http_headers(),
            auth=auth,
            trust_env=False,
        )
        self.server = info.server.rstrip("/")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    # TODO: LATER: a 401 here does not ask kopf to log in again; new credentials arrive only when kopf's own
    # calls hit a 401 first (its re-login calls ``connect``), which covers rotated tokens in practice.
    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if self._session is None or self.server is None:
            raise KubeError("The Kubernetes client is not connected yet (no login happened).")
        headers = {"Content-Type": content_type} if body is not None else {}
        try:
            async with self._session.request(
                method, self.server + path, json=body, params=params, headers=headers, timeout=self.timeout
            ) as response:
                if response.status >= 400:
                    text = (await response.text())[:500]
                    raise KubeError(f"{method} {path} failed with {response.status}: {text}", status=response.status)
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(f"{method} {path} got no answer: {exc or type(exc).__name__}") from exc

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            document: dict[str, Any] = await self.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return document

    async def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        document = await self.request("GET", path, params=params)
        items: list[dict[str, Any]] = document.get("items") or []
        return items

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        document: dict[str, Any] = await self.request("POST", path, body=dict(body))
        return document

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        document: dict[str, Any] = await self.request("PATCH", path, body=dict(body), content_type=MERGE_PATCH)
        return document

    async def delete(self, path: str) -> bool:
        """Delete; False when it was already gone."""
        try:
            await self.request("DELETE", path)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def serves(self, *, group: str, version: str, plural: str) -> bool:
        """Does the API server serve this resource (are its CRDs installed)? Cached for ``discovery_ttl``."""
        now = time.monotonic()
        cached = self._discovery.get((group, version))
        if cached is None or now - cached[0] > self.discovery_ttl:
            path = f"/apis/{group}/{version}" if group else f"/api/{version}"
            document = await self.get(path)
            plurals = frozenset(
                str(item.get("name")) for item in (document or {}).get("resources") or () if isinstance(item, dict)
            )
            cached = (now, plurals)
            self._discovery[(group, version)] = cached
        return plural in cached[1]
