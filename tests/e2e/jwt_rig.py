"""Keys, tokens and a JWKS server, for Envoy's own jwt_authn configured as Istio does.

The Istio translation itself (``Rule``, ``envoy_jwt_filter``, ``request_authentication``)
lives in authz/testing/jwt_authn.py, shared with the benchmark; it is re-exported here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from authz.testing.jwt_authn import JWT_AUTHN, Rule, envoy_jwt_filter, request_authentication
from authz.testing.ports import free_port

__all__ = [
    "JWT_AUTHN", "JwksServer", "Rule", "SigningKey", "ec_key", "ed_key", "envoy_jwt_filter",
    "jwks_of", "request_authentication", "rsa_key",
]


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
