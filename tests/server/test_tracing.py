"""Spans continue the request's trace; without configuration nothing is traced."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.server import AuthzServer
from authz.tracing import Tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_off_by_default_costs_nothing() -> None:
    tracing = Tracing()
    assert tracing.enabled is False
    tracing.record(None, None, 0, 0)  # type: ignore[arg-type]  # never looked at


@pytest.mark.parametrize(
    "headers",
    [{"traceparent": f"00-{TRACE_ID}-{PARENT}-01"},
     {"x-b3-traceid": TRACE_ID, "x-b3-spanid": PARENT, "x-b3-sampled": "1"}],
    ids=["w3c", "b3"],
)
async def test_check_span_is_child_of_request_trace(
    start_server: Callable[..., Awaitable[AuthzServer]], headers: dict[str, str]
) -> None:
    exporter_module = pytest.importorskip(
        "opentelemetry.sdk.trace.export.in_memory_span_exporter",
        reason="the otel extra is not installed")
    exporter = exporter_module.InMemorySpanExporter()
    server = await start_server(ready=False)
    server.tracing = Tracing(exporter=exporter)
    assert server.service is not None
    server.service._tracing = server.tracing
    await server.become_ready()
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.method = "GET"
    req.attributes.request.http.path = "/x?token=secret"
    for k, v in headers.items():
        req.attributes.request.http.headers[k] = v
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req)
    (span,) = exporter.get_finished_spans()
    assert span.name == "authz.Check"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT
    assert span.attributes["authz.decision"] == "allow"
    assert span.attributes["url.path"] == "/x"  # never the query
    assert span.end_time >= span.start_time
