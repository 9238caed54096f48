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
    extra: Mapping[str, Any] = field(default_factory=dict)

    def istio(self, jwks_uri: str) -> dict[str, Any]:
        """The rule as a RequestAuthentication's jwtRules entry (what authz reads)."""
        out: dict[str, Any] = {"issuer": self.issuer, "jwksUri": jwks_uri}
        if self.audiences:
            out["audiences"] = list(self.audiences)
        if self.from_headers:
            out["fromHeaders"] = [{"name": n, "prefix": p} for n, p in self.from_headers]
        if self.from_params:
            out["fromParams"] = list(self.from_params)
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


def envoy_jwt_filter(rules: Sequence[Rule], jwks: Mapping[str, Any]) -> dict[str, Any]:
    """Istio's translation (reference A.6) of the merged rules."""
    ordered = sorted(rules, key=lambda r: r.issuer)
    providers = {f"origins-{i}": r.envoy(jwks) for i, r in enumerate(ordered)}
    names = list(providers)
    if len(names) == 1:
        requires: dict[str, Any] = {"requires_any": {"requirements": [
            {"provider_name": names[0]}, {"allow_missing": {}}]}}
    else:
        requires = {"requires_any": {"requirements": [
            *({"provider_name": n} for n in names),
            {"requires_all": {"requirements": [
                {"requires_any": {"requirements": [{"provider_name": n}, {"allow_missing": {}}]}}
                for n in names
            ]}},
        ]}}
    return {
        "name": JWT_AUTHN_FILTER,
        "typed_config": {
            "@type": JWT_AUTHN,
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": requires}],
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
