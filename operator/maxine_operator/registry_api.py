"""
The registry as the operator sees it: one method per write the custom resources need.

Everything goes through the Python SDK (``maxine_client``), so the operator gets the same token
handling, timeouts and error decoding as any other client. What the operator adds is the reading
of a failure, because that decides what kopf does next:

- ``RegistryUnavailable``: no answer, a 5xx, a 429, or a refusal of the operator's credentials.
  Nothing is wrong with the resource; retrying later can succeed (a ``kopf.TemporaryError``).
- ``RegistryRejected``: the registry refused the resource's content (400, 409, 413, ...).
  Retrying the same spec cannot help; the user must change it (a ``kopf.PermanentError``).

Removals treat 404 as success: an entry that is already gone is exactly what a removal wants.
"""

from __future__ import annotations

import logging
from typing import Any

from maxine_client import AsyncMaxineClient, MaxineError, NotFound, RegistryUnreachable

logger = logging.getLogger(__name__)

SERVICEOPS = "/api/maxine/serviceops"
# Few retries inside one call: kopf retries the whole handler with its own backoff.
CLIENT_RETRIES = 1
# Statuses that say "not now" rather than "not this": overload, credentials, a missing route on an older registry.
_UNAVAILABLE_STATUSES = frozenset({401, 403, 404, 408, 429})


class RegistryError(Exception):
    """A write the registry did not take; ``status`` and ``code`` as the registry answered (None if it did not)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RegistryUnavailable(RegistryError):
    """The registry could not take the write now; the same write may succeed later."""


class RegistryRejected(RegistryError):
    """The registry refused the content of the write; it will refuse it again."""


def classify(error: MaxineError) -> RegistryError:
    """The operator's reading of an SDK error."""
    status = error.status
    if isinstance(error, RegistryUnreachable) or status is None or status >= 500 or status in _UNAVAILABLE_STATUSES:
        return RegistryUnavailable(str(error), status=status, code=error.code)
    return RegistryRejected(str(error), status=status, code=error.code)


class RegistryApi:
    """The registry writes of the operator; ``close()`` releases the HTTP session."""

    def __init__(self, *, base_url: str, token: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.client = AsyncMaxineClient(base_url, token=token, timeout=timeout, retries=CLIENT_RETRIES)
        self.closed = False

    def __repr__(self) -> str:
        return f"RegistryApi(base_url={self.base_url!r})"

    async def close(self) -> None:
        self.closed = True
        await self.client.close()

    async def call(
        self, method: str, path: str, *, json: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> Any:
        try:
            return await self._request(method, path, json=json, params=params)
        except MaxineError as exc:
            raise classify(exc) from exc

    async def remove(
        self, method: str, path: str, *, json: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> bool:
        """A removal; False when the registry had nothing to remove (404), which counts as done."""
        try:
            await self._request(method, path, json=json, params=params)
        except NotFound:
            logger.debug("Nothing to remove in the registry. method=%s path=%s params=%s", method, path, params)
            return False
        except MaxineError as exc:
            raise classify(exc) from exc
        return True

    async def _request(
        self, method: str, path: str, *, json: dict[str, Any] | None, params: dict[str, str] | None
    ) -> Any:
        # A handler kopf has not stopped yet may still write while the operator shuts down: that is
        # "not now" like any other failure, not a traceback in the operator's last log lines.
        if self.closed:
            raise RegistryUnavailable("The operator is stopping; the write is left to its next start.", code="stopping")
        return await self.client.request(method, path, json=json, params=params)

    async def health(self) -> dict[str, Any]:
        try:
            return await self.client.health()
        except MaxineError as exc:
            raise classify(exc) from exc

    # ACLs and intentions.

    async def set_acl(self, *, service_name: str, allow: list[str], deny: list[str]) -> None:
        await self.call(
            "POST", f"{SERVICEOPS}/acl/set", json={"serviceName": service_name, "allow": allow, "deny": deny}
        )

    async def delete_acl(self, *, service_name: str) -> bool:
        return await self.remove("DELETE", f"{SERVICEOPS}/acl/{service_name}")

    async def set_intention(self, *, source: str, destination: str, action: str) -> None:
        body = {"source": source, "destination": destination, "action": action}
        await self.call("POST", f"{SERVICEOPS}/intention/set", json=body)

    async def delete_intention(self, *, source: str, destination: str) -> bool:
        return await self.remove("DELETE", f"{SERVICEOPS}/intention/{source}/{destination}")

    # Traffic splits.

    async def set_traffic(self, *, service_name: str, distribution: dict[str, float]) -> None:
        await self.call("POST", "/traffic/set", json={"serviceName": service_name, "distribution": distribution})

    async def delete_traffic(self, *, service_name: str) -> bool:
        return await self.remove("DELETE", "/traffic", params={"serviceName": service_name})

    # Configs.

    async def set_config(self, *, service_name: str, key: str, value: Any, scope: dict[str, str]) -> None:
        body = {"serviceName": service_name, "key": key, "value": value, **scope}
        await self.call("POST", f"{SERVICEOPS}/config/set", json=body)

    async def delete_config(self, *, service_name: str, key: str, scope: dict[str, str]) -> bool:
        body = {"serviceName": service_name, "key": key, **scope}
        return await self.remove("DELETE", f"{SERVICEOPS}/config/delete", json=body)

    # Dependencies.

    async def add_dependency(self, *, service_name: str, depends_on: str) -> None:
        await self.call(
            "POST", f"{SERVICEOPS}/dependency/add", json={"serviceName": service_name, "dependsOn": depends_on}
        )

    async def remove_dependency(self, *, service_name: str, depends_on: str) -> bool:
        body = {"serviceName": service_name, "dependsOn": depends_on}
        return await self.remove("DELETE", f"{SERVICEOPS}/dependency/remove", json=body)

    # Instances, for the catalog sync.

    async def register(self, *, service_name: str, host: str, port: int, ttl: float, metadata: dict[str, Any]) -> str:
        try:
            registration = await self.client.register(service_name, host=host, port=port, ttl=ttl, metadata=metadata)
        except MaxineError as exc:
            raise classify(exc) from exc
        return registration.node_id

    async def deregister(self, *, node_id: str) -> bool:
        try:
            await self.client.deregister(node_id)
        except NotFound:
            return False
        except MaxineError as exc:
            raise classify(exc) from exc
        return True
