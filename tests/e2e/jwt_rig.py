"""Keys, tokens, a JWKS server, and Envoy's own jwt_authn configured as Istio does.

``envoy_jwt_filter`` translates RequestAuthentication rules the way Istio's
policy applier does (providers ``origins-<i>`` sorted by issuer, ``requires_any``
with ``allow_missing``, ``bypass_cors_preflight``, inline JWKS as istiod
inlines them), so the same requests can go through Envoy's jwt_authn and
through our server and be compared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.ports import free_port

JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = json.loads(RSAAlgorithm.to_jwk(public))
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = json.loads(ECAlgorithm.to_jwk(public))
        else:
            data = json.loads(OKPAlgorithm.to_jwk(public))
        data.update(kid=self.kid, alg=self.alg, use="sig")
        return dict(data)

    def mint(self, claims: Mapping[str, Any], *, kid: str | None = "", alg: str = "",
             ttl: int = 3600) -> str:
        now = int(time.time())
        payload = {"iat": now, "exp": now + ttl, **claims}
        headers = {} if kid is None else {"kid": kid or self.kid}
        return jwt.encode(payload, self.private, algorithm=alg or self.alg, headers=headers)


def rsa_key(kid: str = "rsa-1", alg: str = "RS256") -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str = "ec-1") -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def ed_key(kid: str = "ed-1") -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.jwk() for k in keys]}


class JwksServer:
    """Serves a JWKS that a test can change, break or take down."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self.jwks: Mapping[str, Any] = jwks
        self.status = 200
        self.port = free_port()
        self.hits = 0
        self._runner: web.AppRunner | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        return web.json_response(self.jwks)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class Rule:
    """The jwtRules fields the comparison exercises, rendered both ways."""

    issuer: str
    audiences: Sequence[str] = ()
    from_headers: Sequence[tuple[str, str]] = ()
    from_params: Sequence[str] = ()
    forward: bool = False
    payload_header: str | None = None
    claim_headers: Sequence[tuple[str, str]] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def istio(self, jwks_uri: str) -> dict[str, Any]:
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
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": JWT_AUTHN,
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": requires}],
            "bypass_cors_preflight": True,
        },
    }
