"""The HTTP transport, built on aiohttp: the full API on one port."""

from maxine_registry.http.app import create_app

__all__ = ["create_app"]
