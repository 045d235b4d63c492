"""
OpenTelemetry tracing: whether it is on, where spans go, and the tracer provider that sends them.

Tracing is configured the way every OpenTelemetry SDK is, from the standard variables:

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: the full URL spans are POSTed to (OTLP over HTTP);
- ``OTEL_EXPORTER_OTLP_ENDPOINT``: a base URL, to which ``/v1/traces`` is added;
- ``OTEL_TRACES_EXPORTER``: ``otlp`` (the default), ``console``, or ``none``; a comma list is allowed;
- ``OTEL_SERVICE_NAME``: the service name on every span (``maxine`` unless set);
- ``OTEL_SDK_DISABLED=true``: no tracing at all, whatever else is set.

The contract's ``JAEGER_ENDPOINT`` is one more way to name the destination: Jaeger accepts OTLP
over HTTP (on port 4318 by default), so ``JAEGER_ENDPOINT=http://jaeger:4318`` sends spans to
``http://jaeger:4318/v1/traces``. The OTLP variables win over it when both are set.

Tracing is on only when a destination is named (an endpoint, or the console exporter, or
``OTEL_TRACES_EXPORTER=otlp`` alone, which means the SDK's default ``http://localhost:4318``);
otherwise nothing is built and the HTTP layer installs no middleware, so requests pay nothing.
Spans are exported in batches by the SDK's own thread, never on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from maxine_registry import __version__
from maxine_registry.settings import TRUE_WORDS, Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "maxine"
# The OTLP/HTTP default of the OpenTelemetry specification, used when otlp is asked for by name only.
DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"
TRACES_PATH = "/v1/traces"
EXPORTERS = frozenset({"otlp", "console"})


def traces_url(base: str) -> str:
    """The traces URL under an OTLP base URL (``http://host:4318`` gives ``http://host:4318/v1/traces``)."""
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


@dataclass(frozen=True, slots=True)
class TracingConfig:
    exporters: frozenset[str]
    endpoint: str | None  # the full OTLP traces URL, when otlp is among the exporters
    service_name: str = DEFAULT_SERVICE_NAME

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    @classmethod
    def from_environment(cls, *, settings: Settings, environ: Mapping[str, str]) -> TracingConfig:
        """What the OTEL_* variables and ``JAEGER_ENDPOINT`` ask for; off when they ask for nothing."""
        service_name = environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
        off = cls(exporters=frozenset(), endpoint=None, service_name=service_name)
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in TRUE_WORDS:
            return off

        endpoint: str | None = None
        if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
            endpoint = environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip()
        elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
            endpoint = traces_url(environ["OTEL_EXPORTER_OTLP_ENDPOINT"].strip())
        elif settings.jaeger_endpoint:
            endpoint = traces_url(settings.jaeger_endpoint)

        named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if not named:
            wanted = {"otlp"} if endpoint is not None else set()
        else:
            wanted = {name.strip() for name in named.split(",") if name.strip()} - {"none"}
            unknown = wanted - EXPORTERS
            if unknown:
                logger.warning(
                    "OTEL_TRACES_EXPORTER names exporters Maxine does not have; they are ignored.",
                    extra={"unknown": sorted(unknown), "supported": sorted(EXPORTERS)},
                )
                wanted &= EXPORTERS
        if "otlp" in wanted and endpoint is None:
            endpoint = traces_url(DEFAULT_OTLP_ENDPOINT)
        return cls(
            exporters=frozenset(wanted), endpoint=endpoint if "otlp" in wanted else None, service_name=service_name
        )


def build_tracer_provider(config: TracingConfig) -> TracerProvider:
    # The SDK is loaded only when tracing is on: a registry without it pays no memory for it.
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter  # noqa: PLC0415

    """A tracer provider of its own (not the global one) that exports as ``config`` says."""
    resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource)
    if config.endpoint is not None:
        # Imported only here: the exporter brings protobuf and requests, which nothing else needs.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
    if "console" in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider
