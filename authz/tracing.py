"""Optional OpenTelemetry spans for Check, continuing the request's own trace.

Off by default: without ``--otel-endpoint`` nothing here imports OpenTelemetry
and a Check pays nothing. With it, each decision becomes one span whose parent
is the W3C ``traceparent`` (or B3) context Envoy forwarded in the request
headers, exported in batches by a background thread (``pip install 'authz[otel]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authz.decision import Decision
from authz.errors import MissingExtraError
from authz.request.view import RequestView

__all__ = ["Tracing"]


class Tracing:
    """Records one span per decision; a no-op unless configured."""

    def __init__(self, endpoint: str | None = None, exporter: Any = None) -> None:
        self.enabled = bool(endpoint or exporter)
        if not self.enabled:
            return
        try:
            from opentelemetry.propagators.composite import CompositePropagator
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise MissingExtraError("otel", "--otel-endpoint", exc.name) from exc

        from authz import __version__

        propagators: list[Any] = [TraceContextTextMapPropagator()]
        try:
            from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat

            propagators += [B3MultiFormat(), B3SingleFormat()]
        except ImportError:  # B3 is optional within the extra
            pass
        self._propagator = CompositePropagator(propagators)
        self._provider = TracerProvider(resource=Resource.create(
            {"service.name": "authz", "service.version": __version__}))
        if exporter is not None:
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise MissingExtraError("otel", "--otel-endpoint", exc.name) from exc

            self._provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
        self._tracer = self._provider.get_tracer("authz")

    def record(
        self, view: RequestView | None, decision: Decision, start_ns: int, end_ns: int
    ) -> None:
        if not self.enabled:
            return
        headers: Mapping[str, str] = view.headers if view is not None else {}
        parent = self._propagator.extract(carrier=dict(headers))
        span = self._tracer.start_span("authz.Check", context=parent, start_time=start_ns)
        span.set_attribute("authz.decision", "allow" if decision.allowed else "deny")
        span.set_attribute("http.response.status_code", decision.status)
        span.set_attribute("authz.reason", decision.reason.value)
        if decision.policy:
            span.set_attribute("authz.policy", decision.policy)
        if view is not None:
            span.set_attribute("authz.request.scope", str(view.scope))
            span.set_attribute("http.request.method", view.method)
            span.set_attribute("url.path", view.path)
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        if self.enabled:
            self._provider.shutdown()
