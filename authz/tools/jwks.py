"""Public keys as JWKs (RFC 7517/7518/8037) with RFC 7638 thumbprint key ids.

The kid defaults to the thumbprint so that a key's id is a pure function of the
key: ``jwks from-pem`` and ``token mint`` agree without any flag or state.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz.tools.keys import PrivateKey, PublicKey, ToolError, curve_name

__all__ = [
    "allowed_algs", "b64url", "check_alg", "default_alg", "describe", "dumps", "jwk_entry",
    "jwks_document", "key_thumbprint", "public_jwk", "public_of", "thumbprint",
]

# RFC 7638 section 3.2 (RSA, EC) and RFC 8037 section 2 (OKP): the members hashed.
THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALG_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
EDDSA = "EdDSA"


def b64url(data: bytes) -> str:
    """base64url without padding, as JOSE requires everywhere."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    # RFC 7518 section 2 Base64urlUInt: minimal big-endian octets, zero as one octet.
    return b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def public_of(key: PublicKey | PrivateKey) -> PublicKey:
    """The public half, whichever half was given."""
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
                  | ed25519.Ed25519PrivateKey):
        return key.public_key()
    return key


def public_jwk(key: PublicKey | PrivateKey) -> dict[str, str]:
    """The key's required JWK members only; never any private parameter."""
    pub = public_of(key)
    if isinstance(pub, rsa.RSAPublicKey):
        numbers = pub.public_numbers()
        return {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    if isinstance(pub, ec.EllipticCurvePublicKey):
        size = (pub.curve.key_size + 7) // 8
        point = pub.public_numbers()
        # RFC 7518 section 6.2.1.2: coordinates are full field-size octet strings.
        return {
            "kty": "EC",
            "crv": curve_name(pub),
            "x": b64url(point.x.to_bytes(size, "big")),
            "y": b64url(point.y.to_bytes(size, "big")),
        }
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint: required members, sorted, no whitespace, UTF-8."""
    kty = jwk.get("kty")
    members = THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ToolError(f"JWK kty {kty!r} has no thumbprint definition")
    missing = [m for m in members if not isinstance(jwk.get(m), str)]
    if missing:
        raise ToolError(f"JWK of kty {kty} lacks {', '.join(missing)}")
    canonical = json.dumps({m: jwk[m] for m in members}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def key_thumbprint(key: PublicKey | PrivateKey) -> str:
    """The default kid of a key; the same for its private and public halves."""
    return thumbprint(public_jwk(key))


def allowed_algs(key: PublicKey | PrivateKey) -> tuple[str, ...]:
    """JWS algorithms the key can sign or verify with (RFC 7518, RFC 8037)."""
    pub = public_of(key)
    if isinstance(pub, rsa.RSAPublicKey):
        return RSA_ALGS
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return (EC_ALG_BY_CURVE[curve_name(pub)],)
    return (EDDSA,)


def default_alg(key: PublicKey | PrivateKey) -> str:
    """RS256 for RSA (what Istio examples and most IdPs use), else the key's only alg."""
    return allowed_algs(key)[0]


def describe(key: PublicKey | PrivateKey) -> str:
    """A short human name for error messages, e.g. 'EC P-384 key'."""
    pub = public_of(key)
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA-{pub.key_size} key"
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return f"EC {curve_name(pub)} key"
    return "Ed25519 key"


def check_alg(key: PublicKey | PrivateKey, alg: str) -> str:
    """Return ``alg`` if the key can use it; explain the mismatch otherwise.

    'none' and HMAC algorithms are refused outright: with an asymmetric key they are
    the classic algorithm-confusion mistakes.
    """
    allowed = allowed_algs(key)
    if alg in allowed:
        return alg
    if alg.lower() == "none":
        raise ToolError("alg 'none' produces unsigned tokens and is never allowed")
    if alg.upper().startswith("HS"):
        raise ToolError(f"alg {alg} is an HMAC (shared secret) algorithm and cannot be used "
                        f"with an {describe(key)}; use {', '.join(allowed)}")
    raise ToolError(f"alg {alg} does not fit an {describe(key)}; use {', '.join(allowed)}")


def jwk_entry(key: PublicKey | PrivateKey, kid: str | None = None,
              alg: str | None = None) -> dict[str, str]:
    """A JWKS entry: public members plus kid (thumbprint by default), use=sig and alg."""
    entry = public_jwk(key)
    entry["kid"] = kid if kid is not None else thumbprint(entry)
    entry["use"] = "sig"
    entry["alg"] = check_alg(key, alg) if alg is not None else default_alg(key)
    return entry


def jwks_document(entries: Sequence[Mapping[str, str]]) -> dict[str, list[dict[str, str]]]:
    """The ``{"keys": [...]}`` set Istio's ``jwks`` / ``jwksUri`` expects."""
    kids = [e.get("kid") for e in entries]
    duplicates = sorted({k for k in kids if k is not None and kids.count(k) > 1})
    if duplicates:
        raise ToolError(f"duplicate kid {', '.join(duplicates)}: the same key was given "
                        "twice, or --kid repeats one")
    return {"keys": [dict(e) for e in entries]}


def dumps(document: Mapping[str, Any]) -> str:
    """Stable, readable JSON so generated files diff cleanly."""
    return json.dumps(document, indent=2) + "\n"
