"""The ``maxine`` command: read settings, set up logging, serve until told to stop."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from maxine_registry.logs import configure_logging
from maxine_registry.server import CannotListen, serve
from maxine_registry.settings import SettingsError, load_settings


def _install_uvloop() -> None:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # uvloop is optional on platforms that lack it; asyncio's loop works, slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"maxine: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    configure_logging(log_format=settings.log_format, level=settings.log_level)
    _install_uvloop()
    try:
        asyncio.run(serve(settings))
    except CannotListen as exc:
        print(f"maxine: cannot listen on {exc.where}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        print(f"maxine: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None
