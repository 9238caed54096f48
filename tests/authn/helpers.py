"""Keys, JWKS documents, tokens and request views for the authn tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt as pyjwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz.request.scope import Scope
from authz.request.view import Peer, RequestView
from tests.shared_data import require_shared, shared_path

SAMPLES_DIR = "conformance/istio-jwt-samples"
COMMON_DIR = f"{SAMPLES_DIR}/tests-common-jwt"
SAMPLES = shared_path(SAMPLES_DIR)
COMMON = shared_path(COMMON_DIR)
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class Key:
    """A private key, its kid and alg, and its public JWK."""

    private: Any
    kid: str | None
    alg: str

    def jwk(self, *, with_alg: bool = True, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any]
        pub = self.private.public_key() if not isinstance(self.private, bytes) else None
        if isinstance(pub, rsa.RSAPublicKey):
            nums = pub.public_numbers()
            out = {"kty": "RSA", "n": _int(nums.n), "e": _int(nums.e)}
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            nums = pub.public_numbers()
            size = (pub.curve.key_size + 7) // 8
            crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[pub.curve.name]
            out = {"kty": "EC", "crv": crv, "x": b64(nums.x.to_bytes(size, "big")),
                   "y": b64(nums.y.to_bytes(size, "big"))}
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            from cryptography.hazmat.primitives import serialization
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            out = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        else:
            out = {"kty": "oct", "k": b64(self.private)}
        if self.kid is not None:
            out["kid"] = self.kid
        if with_alg:
            out["alg"] = self.alg
        out.update(extra)
        return out

    def sign(self, claims: Mapping[str, Any], *, kid: str | bool | None = True,
             alg: str | None = None, headers: Mapping[str, Any] | None = None) -> str:
        hdr: dict[str, Any] = dict(headers or {})
        if kid is True and self.kid is not None:
            hdr["kid"] = self.kid
        elif isinstance(kid, str):
            hdr["kid"] = kid
        return pyjwt.encode(dict(claims), self.private, algorithm=alg or self.alg,
                            headers=hdr or None)


_RSA_CACHE: dict[int, rsa.RSAPrivateKey] = {}


def rsa_key(kid: str | None = "rsa-1", alg: str = "RS256", seed: int = 0) -> Key:
    if seed not in _RSA_CACHE:
        _RSA_CACHE[seed] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Key(_RSA_CACHE[seed], kid, alg)


def ec_key(kid: str | None = "ec-1", alg: str = "ES256") -> Key:
    curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
    return Key(ec.generate_private_key(curve), kid, alg)


def ed_key(kid: str | None = "ed-1") -> Key:
    return Key(ed25519.Ed25519PrivateKey.generate(), kid, "EdDSA")


def hmac_key(kid: str | None = "hs-1", secret: bytes = b"s" * 32) -> Key:
    return Key(secret, kid, "HS256")


def jwks(*jwk_dicts: dict[str, Any]) -> str:
    return json.dumps({"keys": list(jwk_dicts)})


def claims(iss: str = "issuer-1", sub: str = "sub-1", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"iss": iss, "sub": sub, "iat": int(NOW) - 10,
                           "exp": int(NOW) + 3600}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def unsigned(header: Mapping[str, Any], payload: Mapping[str, Any] | str,
             signature: bytes = b"sig") -> str:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return ".".join([b64(json.dumps(header).encode()), b64(body.encode()), b64(signature)])


def view(*, headers: Mapping[str, str] | None = None, path: str = "/headers", query: str = "",
         method: str = "GET", host: str = "httpbin.foo:8000", scheme: str = "http",
         namespace: str = "foo", labels: Mapping[str, str] | None = None) -> RequestView:
    return RequestView(
        method=method, host=host, path=path, query=query,
        headers=MappingProxyType({k.lower(): v for k, v in (headers or {}).items()}),
        source=Peer(), destination=Peer(), context_extensions=MappingProxyType({}),
        scope=Scope(namespace, MappingProxyType(dict(labels or {}))), scheme=scheme,
    )


def sample(name: str) -> str:
    return (COMMON / f"{name}.jwt").read_text().strip()


def require_samples() -> None:
    """Skip (fail under CI) unless Istio's test tokens are in the shared corpus."""
    require_shared(f"{COMMON_DIR}/jwks.json")
    require_shared(f"{COMMON_DIR}/TokenIssuer1.jwt")


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` on a free loopback port: its runner (``cleanup()`` when done) and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
