"""
Maxine's Python client: register a service, keep it alive, discover others.

``AsyncMaxineClient`` is the client for asyncio programs; ``MaxineClient`` offers the same methods
to blocking code by running the asynchronous one on a private loop. A service usually needs one
call for its whole life::

    async with AsyncMaxineClient("http://127.0.0.1:8080") as client:
        async with client.registered("orders", host="10.0.0.7", port=9000, ttl=10):
            ...  # serve; heartbeats run in the background

    instance = await client.discover("orders")
"""

from maxine_client._client import AsyncMaxineClient
from maxine_client._config import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RetryPolicy,
)
from maxine_client._errors import MaxineError, NotFound, NotRegistered, RegistryUnreachable, Unavailable
from maxine_client._keepalive import AsyncKeepAlive
from maxine_client._models import Instance, Lease, Registration
from maxine_client._sync import KeepAlive, MaxineClient

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_CAP",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "AsyncKeepAlive",
    "AsyncMaxineClient",
    "Instance",
    "KeepAlive",
    "Lease",
    "MaxineClient",
    "MaxineError",
    "NotFound",
    "NotRegistered",
    "Registration",
    "RegistryUnreachable",
    "RetryPolicy",
    "Unavailable",
]
