"""
Tracing: server spans per request and operation spans for register, discover and deregister.

Spans are checked in memory (the SDK's ``InMemorySpanExporter``) and on the wire: a local OTLP/HTTP
receiver on loopback gets the protobuf the exporter sends, decoded with ``opentelemetry-proto``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from maxine_registry.http.app import has_request_middleware
from maxine_registry.settings import Settings, SettingsError, load_settings
from maxine_registry.tracing import TracingConfig
from tests.registry.conftest import OtlpReceiver

Client = TestClient[object, object]
ORDERS = {"serviceName": "orders", "host": "10.0.0.5", "port": 8080}
OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
)


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_each_request_gets_a_server_span_named_by_its_route_pattern(
    traced_api: Client, span_exporter: InMemorySpanExporter
) -> None:
    await traced_api.post("/register", json=ORDERS)
    await traced_api.get("/circuit-breaker/orders:10.0.0.5:8080")

    (span,) = spans_named(span_exporter, "GET /circuit-breaker/{nodeId}")
    assert span.kind is SpanKind.SERVER
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/circuit-breaker/{nodeId}"
    assert span.attributes["http.response.status_code"] == 200


async def test_discover_gets_a_span_with_the_strategy_and_the_chosen_node(
    traced_api: Client, span_exporter: InMemorySpanExporter
) -> None:
    await traced_api.post("/register", json=ORDERS)

    await traced_api.get("/discover", params={"serviceName": "orders", "loadBalancing": "random"})

    (server,) = spans_named(span_exporter, "GET /discover")
    (discover,) = spans_named(span_exporter, "discover")
    assert discover.parent is not None and discover.parent.span_id == server.context.span_id
    assert discover.attributes is not None
    assert discover.attributes["maxine.strategy"] == "random"
    assert discover.attributes["maxine.service"] == "orders"
    assert discover.attributes["maxine.node_id"] == "orders:10.0.0.5:8080"


async def test_register_and_deregister_get_spans_on_both_surfaces(
    traced_api: Client, span_exporter: InMemorySpanExporter
) -> None:
    await traced_api.post("/api/maxine/serviceops/register", json=ORDERS)
    await traced_api.delete("/deregister", json={"nodeId": "orders:10.0.0.5:8080"})

    (register,) = spans_named(span_exporter, "register")
    (deregister,) = spans_named(span_exporter, "deregister")
    assert register.attributes is not None and deregister.attributes is not None
    assert register.attributes["maxine.node_id"] == "orders:10.0.0.5:8080"
    assert deregister.attributes["maxine.node_id"] == "orders:10.0.0.5:8080"


async def test_a_failed_operation_is_an_error_span_but_a_404_is_no_server_error(
    traced_api: Client, span_exporter: InMemorySpanExporter
) -> None:
    await traced_api.get("/discover", params={"serviceName": "nobody"})

    (server,) = spans_named(span_exporter, "GET /discover")
    (discover,) = spans_named(span_exporter, "discover")
    assert server.status.status_code is StatusCode.UNSET
    assert discover.status.status_code is StatusCode.ERROR
    assert discover.attributes is not None and discover.attributes["maxine.error_code"] == "service_not_found"


async def test_a_request_continues_the_callers_trace(traced_api: Client, span_exporter: InMemorySpanExporter) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    await traced_api.get("/health", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})

    (span,) = spans_named(span_exporter, "GET /health")
    assert f"{span.context.trace_id:032x}" == trace_id


async def test_spans_reach_an_otlp_receiver_named_by_jaeger_endpoint(
    app_client: Callable[..., Awaitable[Client]], otlp_receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    api = await app_client(Settings(jaeger_endpoint=otlp_receiver.base_url))

    await api.post("/register", json=ORDERS)
    await api.get("/discover", params={"serviceName": "orders"})
    await api.close()  # the app's cleanup shuts the provider down, which flushes the batch

    names = set()
    for body in otlp_receiver.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {item.key: item.value.string_value for item in resource_spans.resource.attributes}
            assert attributes["service.name"] == "maxine"
            names |= {span.name for scope in resource_spans.scope_spans for span in scope.spans}
    assert otlp_receiver.content_types and set(otlp_receiver.content_types) == {"application/x-protobuf"}
    assert {"POST /register", "register", "GET /discover", "discover"} <= names


async def test_the_otlp_variables_name_the_destination_and_the_service(
    app_client: Callable[..., Awaitable[Client]], otlp_receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.base_url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "registry-east")
    api = await app_client(Settings())

    await api.get("/health")
    await api.close()

    (body,) = otlp_receiver.bodies
    resource = ExportTraceServiceRequest.FromString(body).resource_spans[0].resource
    assert {item.key: item.value.string_value for item in resource.attributes}["service.name"] == "registry-east"


async def test_without_a_destination_no_tracing_middleware_is_installed(
    app_client: Callable[..., Awaitable[Client]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    api = await app_client(Settings())

    assert not has_request_middleware(api.app)


@pytest.mark.parametrize(
    ("environ", "jaeger", "exporters", "endpoint"),
    [
        ({}, "", set(), None),
        ({}, "http://127.0.0.1:4318", {"otlp"}, "http://127.0.0.1:4318/v1/traces"),
        ({}, "http://127.0.0.1:4318/v1/traces", {"otlp"}, "http://127.0.0.1:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9/"}, "", {"otlp"}, "http://127.0.0.1:9/v1/traces"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/custom"},
            "http://127.0.0.1:4318",
            {"otlp"},
            "http://127.0.0.1:9/custom",
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "", {"otlp"}, "http://localhost:4318/v1/traces"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "", {"console"}, None),
        ({"OTEL_TRACES_EXPORTER": "none"}, "http://127.0.0.1:4318", set(), None),
        ({"OTEL_SDK_DISABLED": "true"}, "http://127.0.0.1:4318", set(), None),
    ],
)
def test_the_configuration_follows_the_standard_variables(
    environ: dict[str, str], jaeger: str, exporters: set[str], endpoint: str | None
) -> None:
    config = TracingConfig.from_environment(settings=Settings(jaeger_endpoint=jaeger), environ=environ)

    assert (set(config.exporters), config.endpoint) == (exporters, endpoint)


def test_jaegers_thrift_collector_is_refused_with_a_hint() -> None:
    with pytest.raises(SettingsError, match="4318"):
        load_settings([], environ={"JAEGER_ENDPOINT": "http://127.0.0.1:14268/api/traces"})
