"""Envoy's own jwt_authn and RBAC configured the way Istio configures them.

``envoy_jwt_filter`` translates RequestAuthentication rules the way Istio's
policy applier does (providers ``origins-<i>`` sorted by issuer, ``requires_any``
with ``allow_missing``, ``bypass_cors_preflight``, inline JWKS as istiod
inlines them), so the same requests can go through Envoy's jwt_authn and
through authz and be compared, by the tests (answer for answer) and by the
benchmark (cost for cost).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"


@dataclass(frozen=True)
class Rule:
    """The jwtRules fields the comparison exercises, rendered both ways."""

    issuer: str
    audiences: Sequence[str] = ()
    from_headers: Sequence[tuple[str, str]] = ()
    from_params: Sequence[str] = ()
    forward: bool = False
    payload_header: str | None = None
    claim_headers: Sequence[tuple[str, str]] = ()
    from_cookies: Sequence[str] = ()
    presence: str = "OPTIONAL"
    """``OPTIONAL`` or ``REQUIRED`` (istio/istio#60830)."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        return self.presence == "REQUIRED"

    def istio(self, jwks_uri: str) -> dict[str, Any]:
        """The rule as a RequestAuthentication's jwtRules entry (what authz reads)."""
        out: dict[str, Any] = {"issuer": self.issuer, "jwksUri": jwks_uri}
        if self.audiences:
            out["audiences"] = list(self.audiences)
        if self.from_headers:
            out["fromHeaders"] = [{"name": n, "prefix": p} for n, p in self.from_headers]
        if self.from_params:
            out["fromParams"] = list(self.from_params)
        if self.from_cookies:
            out["fromCookies"] = list(self.from_cookies)
        if self.presence != "OPTIONAL":
            out["presence"] = self.presence
        if self.forward:
            out["forwardOriginalToken"] = True
        if self.payload_header:
            out["outputPayloadToHeader"] = self.payload_header
        if self.claim_headers:
            out["outputClaimToHeaders"] = [{"header": h, "claim": c}
                                           for h, c in self.claim_headers]
        return {**out, **self.extra}

    def envoy(self, jwks: Mapping[str, Any]) -> dict[str, Any]:
        """The rule as a jwt_authn provider, its JWKS inline (what istiod sends Envoy)."""
        out: dict[str, Any] = {
            "issuer": self.issuer,
            "local_jwks": {"inline_string": json.dumps(jwks)},
            "forward": self.forward,
            "payload_in_metadata": "payload",
        }
        if self.audiences:
            out["audiences"] = list(self.audiences)
        if self.from_headers:
            out["from_headers"] = [{"name": n, "value_prefix": p} for n, p in self.from_headers]
        if self.from_params:
            out["from_params"] = list(self.from_params)
        if self.from_cookies:
            out["from_cookies"] = list(self.from_cookies)
        if self.payload_header:
            out["forward_payload_header"] = self.payload_header
        if self.claim_headers:
            out["claim_to_headers"] = [{"header_name": h, "claim_name": c}
                                       for h, c in self.claim_headers]
        return out


def request_authentication(rules: Sequence[Rule], jwks_uri: str, name: str = "jwt",
                           namespace: str = "default") -> str:
    """A RequestAuthentication of these rules, as JSON (a policy file authz loads)."""
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"jwtRules": [r.istio(jwks_uri) for r in rules]},
    }
    return json.dumps(doc)


def requirement(names: Sequence[str], required: Sequence[bool]) -> dict[str, Any]:
    """Istio's ``convertToEnvoyJwtConfig`` requirement for providers ``names`` (sorted by
    issuer), ``required[i]`` telling whether rule i says ``presence: REQUIRED``.

    Each provider is ``requires_any[provider, allow_missing]``, or the bare provider when
    REQUIRED. One provider: that alone. Several, none REQUIRED: ``requires_any`` of every
    bare provider and ``requires_all`` of the per-provider requirements. Several with any
    REQUIRED: only the ``requires_all`` (the outer "any provider" shortcut is skipped,
    istio/istio#60830)."""
    inner: list[dict[str, Any]] = [
        {"provider_name": n} if req else
        {"requires_any": {"requirements": [{"provider_name": n}, {"allow_missing": {}}]}}
        for n, req in zip(names, required, strict=True)
    ]
    if len(inner) == 1:
        return inner[0]
    every = {"requires_all": {"requirements": inner}}
    if any(required):
        return every
    return {"requires_any": {"requirements": [*({"provider_name": n} for n in names), every]}}


def envoy_jwt_filter(rules: Sequence[Rule], jwks: Mapping[str, Any]) -> dict[str, Any]:
    """Istio's translation (reference A.6) of the merged rules."""
    return envoy_jwt_filter_routes([("/", rules)], jwks)


def envoy_jwt_filter_routes(routes: Sequence[tuple[str, Sequence[Rule]]],
                            jwks: Mapping[str, Any]) -> dict[str, Any]:
    """One jwt_authn filter serving several independent translations, one per path
    prefix (its providers named ``<k>-origins-<i>``; a single route keeps Istio's plain
    ``origins-<i>``), so one Envoy can judge many RequestAuthentications at once.
    Issuers must differ between routes: jwt_authn finds some providers by issuer."""
    providers: dict[str, Any] = {}
    matchers: list[dict[str, Any]] = []
    for k, (prefix, rules) in enumerate(routes):
        ordered = sorted(rules, key=lambda r: r.issuer)
        tag = "" if len(routes) == 1 else f"{k}-"
        names = [f"{tag}origins-{i}" for i in range(len(ordered))]
        providers.update({n: r.envoy(jwks) for n, r in zip(names, ordered, strict=True)})
        matchers.append({"match": {"prefix": prefix},
                         "requires": requirement(names, [r.required for r in ordered])})
    return {
        "name": JWT_AUTHN_FILTER,
        "typed_config": {
            "@type": JWT_AUTHN,
            "providers": providers,
            "rules": matchers,
            "bypass_cors_preflight": True,
        },
    }


def deny_without_principal_filter(namespace: str, policy: str) -> dict[str, Any]:
    """Istio's RBAC filter for ``action: DENY`` of ``notRequestPrincipals: ["*"]``: a
    request whose jwt_authn payload has no issuer (no valid token) is denied."""
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": RBAC,
            "rules": {"action": "DENY", "policies": {
                f"ns[{namespace}]-policy[{policy}]-rule[0]": {
                    "permissions": [{"any": True}],
                    "principals": [{"not_id": {"metadata": {
                        "filter": JWT_AUTHN_FILTER,
                        "path": [{"key": "payload"}, {"key": "iss"}],
                        "value": {"string_match": {"safe_regex": {"regex": ".+"}}},
                    }}}],
                }}},
        },
    }
