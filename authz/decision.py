"""The outcome of one ``Check``: data shared by responses, logs and metrics.

A deny is a ``Decision``; an internal failure is an exception (it becomes a gRPC
error status at the edge, so Envoy applies its own ``failure_mode_allow``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = ["Decision", "Header", "Reason"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Reason(StrEnum):
    """One code per outcome: the log field, the metric label and the docs use it."""

    NO_POLICY = "no_policy"
    """No ALLOW/DENY policy applies to the request's scope (Istio: allow)."""
    ALLOWED = "allowed"
    """An ALLOW policy matched, or only DENY policies exist and none matched."""
    RBAC_DENIED = "rbac_denied"
    """A DENY policy matched, or ALLOW policies exist and none matched."""
    JWT_INVALID = "jwt_invalid"
    """A token was present and failed verification (401)."""
    JWT_AUDIENCE = "jwt_audience_not_allowed"
    """The token's ``aud`` matched none of the rule's audiences (403)."""
    INVALID_SCOPE = "invalid_scope"
    """The route's ``context_extensions`` cannot be read as a scope (403, fail closed)."""


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    value: str
    append: bool = False
    """False: overwrite or add (Envoy's default for ext_authz responses)."""


class Decision(NamedTuple):
    """Allow or deny, with everything Envoy must do about it.

    On allow, ``upstream_headers``/``upstream_headers_to_remove`` and the query
    mutations change the request sent upstream and ``response_headers`` go to the
    client. On deny, ``status``, ``body`` and ``response_headers`` make the
    client's response.

    A named tuple, not a frozen dataclass: a token seen for the first time gets a
    new one, and a frozen dataclass of fifteen fields took ~5 µs to build against
    ~1 µs for a tuple (docs/design/performance.md, "Tokens seen for the first time").
    """

    allowed: bool
    status: int
    reason: Reason
    body: str = ""
    upstream_headers: tuple[Header, ...] = ()
    upstream_headers_to_remove: tuple[str, ...] = ()
    query_parameters_to_remove: tuple[str, ...] = ()
    response_headers: tuple[Header, ...] = ()
    dynamic_metadata: Mapping[str, Any] = _EMPTY
    policy: str | None = None
    """Which policy (and rule) decided, e.g. ``ns[foo]-policy[bar]-rule[0]``."""
    detail: str = ""
    """A human explanation for logs; never a token or a secret."""
    principal: str | None = None
    """The verified request principal (``<iss>/<sub>``), when a token was valid."""
    issuer: str | None = None
    """The verified token's issuer (a configured one: safe as a metric label)."""
    dry_run: tuple[str, ...] = ()
    """What dry-run policies would have done (Istio's shadow effect): logged, never enforced."""
    audit: tuple[str, ...] = ()
    """AUDIT policy rules that matched."""

    @classmethod
    def allow(cls, reason: Reason = Reason.NO_POLICY, **kw: Any) -> Decision:
        return cls(allowed=True, status=200, reason=reason, **kw)

    @classmethod
    def deny(cls, status: int, body: str, reason: Reason, **kw: Any) -> Decision:
        if not 400 <= status <= 599:
            raise ValueError(f"deny status must be an HTTP error code, got {status}")
        return cls(allowed=False, status=status, reason=reason, body=body, **kw)
