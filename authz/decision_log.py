"""One structured line per decision, without secrets.

Fields: request id, trace context, method, host, path (never the query: tokens
travel there), scope, decision, status, reason, deciding policy/rule, request
principal, source principal and IP, dry-run and audit effects, latency. Header
values are logged only when asked for by name, and the sensitive ones are
always replaced by ``[redacted]``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from authz.decision import Decision
from authz.envoy.request_view import RequestView

MODES = ("all", "deny", "sample", "none")
REDACTED = "[redacted]"
SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
    "x-auth-token", "x-forwarded-client-cert", "x-jwt-assertion",
})

log = structlog.get_logger("authz.decision")


def trace_context(headers: Mapping[str, str]) -> dict[str, str]:
    """trace_id/span_id from W3C ``traceparent`` or Zipkin B3 (multi or single header)."""
    traceparent = headers.get("traceparent")
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) >= 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            return {"trace_id": parts[1], "span_id": parts[2]}
    if "x-b3-traceid" in headers:
        out = {"trace_id": headers["x-b3-traceid"]}
        if "x-b3-spanid" in headers:
            out["span_id"] = headers["x-b3-spanid"]
        return out
    b3 = headers.get("b3")
    if b3 and "-" in b3:
        trace_id, span_id = b3.split("-")[:2]
        return {"trace_id": trace_id, "span_id": span_id}
    return {}


class DecisionLog:
    def __init__(
        self,
        mode: str = "all",
        sample_rate: float = 0.01,
        headers: Iterable[str] = (),
        redact: Iterable[str] = (),
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"decision log mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.sample_rate = sample_rate
        self.headers = tuple(h.lower() for h in headers)
        self.redact = SENSITIVE_HEADERS | {h.lower() for h in redact}
        self._random = random.Random()  # noqa: S311 - sampling, not security

    def wanted(self, decision: Decision) -> bool:
        if self.mode == "all":
            return True
        if self.mode == "none":
            return False
        if not decision.allowed:
            return True
        return self.mode == "sample" and self._random.random() < self.sample_rate

    def fields(
        self, view: RequestView | None, decision: Decision, latency: float
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "decision": "allow" if decision.allowed else "deny",
            "status": decision.status,
            "reason": decision.reason.value,
            "policy": decision.policy,
            "latency_ms": round(latency * 1000, 3),
        }
        if decision.principal:
            out["principal"] = decision.principal
        if decision.dry_run:
            out["dry_run"] = list(decision.dry_run)
        if decision.audit:
            out["audit"] = list(decision.audit)
        if decision.detail:
            out["detail"] = decision.detail
        if view is not None:
            out.update(
                request_id=view.request_id,
                method=view.method,
                host=view.host,
                path=view.path,
                scope=str(view.scope),
                source_ip=view.source.ip,
                source_principal=view.source.principal or None,
            )
            out.update(trace_context(view.headers))
            if self.headers:
                out["headers"] = {
                    name: (REDACTED if name in self.redact else view.headers[name])
                    for name in self.headers if name in view.headers
                }
        return out

    def emit(self, view: RequestView | None, decision: Decision, latency: float) -> None:
        if self.wanted(decision):
            log.info("decision", **self.fields(view, decision, latency))
