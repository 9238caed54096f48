"""JWKS text -> an immutable set of usable verification keys (reference A.4).

Follows jwt_verify_lib's ``jwks.cc``: a JSON object with ``keys[]`` whose
non-object entries are ignored and whose unusable keys are skipped (each with
a reason, for logs); the set is invalid only when no key is usable. A
``{kid: PEM certificate}`` map (Google's certs format) is read as RSA keys.

One deliberate addition: a key whose ``use`` is set to something other than
``sig`` (an encryption key) is skipped. jwt_verify_lib ignores ``use``.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz.errors import AuthzError

__all__ = [
    "EC_CURVES", "JWKS_BAD_KEYS", "JWKS_NO_KEYS", "JWKS_NO_VALID_KEYS", "JWKS_PARSE_ERROR", "Jwk",
    "JwkError", "KeySet", "b64url_decode", "parse_jwk", "parse_jwks",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | bytes
"""``bytes`` is an ``oct`` (HMAC) secret."""

# Envoy's jwt_verify_lib status strings for a whole key set (reference D).
JWKS_PARSE_ERROR = "Jwks is an invalid JSON"
JWKS_NO_KEYS = "Jwks does not have [keys] field"
JWKS_BAD_KEYS = "[keys] in Jwks is not an array"
JWKS_NO_VALID_KEYS = "Jwks doesn't have any valid public key"

EC_CURVES: dict[str, tuple[ec.EllipticCurve, str, int]] = {
    "P-256": (ec.SECP256R1(), "ES256", 32),
    "P-384": (ec.SECP384R1(), "ES384", 48),
    "P-521": (ec.SECP521R1(), "ES512", 66),
}
ALG_TO_CURVE = {alg: crv for crv, (_, alg, _) in EC_CURVES.items()}
HMAC_ALGS = ("HS256", "HS384", "HS512")


class JwkError(AuthzError, ValueError):
    """One JWK cannot be used; the message is jwt_verify_lib's reason. Fix or remove
    that key in the JWKS; the set's other keys still verify tokens."""


@dataclass(frozen=True, slots=True)
class Jwk:
    """One usable key. ``fingerprint`` identifies it across refreshes (cache keys)."""

    kty: str
    key: PublicKey = field(repr=False)
    kid: str | None = None
    alg: str | None = None
    crv: str | None = None
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable, published key set. ``error`` is set when no key is usable."""

    keys: tuple[Jwk, ...] = ()
    skipped: tuple[str, ...] = ()
    """Why each unusable entry was skipped (never key material)."""
    error: str | None = None
    fingerprints: frozenset[str] = frozenset()
    kids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, keys: Iterable[Jwk], skipped: Iterable[str] = ()) -> KeySet:
        keys = tuple(keys)
        skipped = tuple(skipped)
        return cls(
            keys=keys, skipped=skipped, error=None if keys else JWKS_NO_VALID_KEYS,
            fingerprints=frozenset(k.fingerprint for k in keys),
            kids=frozenset(k.kid for k in keys if k.kid is not None),
        )

    @classmethod
    def failed(cls, error: str) -> KeySet:
        return cls(error=error)

    @property
    def usable(self) -> bool:
        return bool(self.keys)


def b64url_decode(text: str) -> bytes:
    """Base64url with optional padding, strict alphabet (jwt_verify_lib's decoder).

    One translation to the standard alphabet, in which ``+`` and ``/`` (not base64url)
    become a byte the strict decoder refuses; the decoder then checks every character
    and the length, so the only check left here is the padding."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    stripped = text.rstrip("=")
    if len(text) - len(stripped) > 2:
        raise ValueError("bad padding")
    raw = stripped.encode("ascii").translate(_TO_STANDARD)  # non-ASCII: UnicodeEncodeError
    try:
        return binascii.a2b_base64(raw + _PADDING[len(raw) % 4], strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc


_TO_STANDARD = bytes.maketrans(b"-_+/", b"+/!!")
_PADDING = (b"", b"", b"==", b"=")
"""By length mod 4 (1 cannot be base64: the strict decoder rejects it)."""


def _fingerprint(kty: str, kid: str | None, alg: str | None, material: bytes) -> str:
    digest = hashlib.sha256(material).hexdigest()[:32]
    return f"{kty}:{kid or ''}:{alg or ''}:{digest}"


def _b64_field(data: dict[str, Any], name: str) -> bytes:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(name)
    return b64url_decode(value)


def _rsa(data: dict[str, Any], kid: str | None, alg: str | None) -> Jwk:
    if alg is not None and not alg.startswith(("RS", "PS")):
        raise JwkError("[alg] is not started with [RS] or [PS] for an RSA key")
    try:
        n = int.from_bytes(_b64_field(data, "n"), "big")
        e = int.from_bytes(_b64_field(data, "e"), "big")
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise JwkError("Jwks RSA [n] or [e] field is missing or has a parse error") from exc
    material = n.to_bytes((n.bit_length() + 7) // 8, "big") + b"|" + e.to_bytes(8, "big")
    return Jwk("RSA", key, kid, alg, None, _fingerprint("RSA", kid, alg, material))


def _ec(data: dict[str, Any], kid: str | None, alg: str | None) -> Jwk:
    if alg is not None and not alg.startswith("ES"):
        raise JwkError("[alg] is not started with [ES] for an EC key")
    crv = data.get("crv")
    if crv is None and alg is not None:
        crv = ALG_TO_CURVE.get(alg)
    if not isinstance(crv, str) or crv not in EC_CURVES:
        raise JwkError("[crv] field is not supported for an EC key")
    curve, curve_alg, _ = EC_CURVES[crv]
    if alg is not None and alg != curve_alg:
        raise JwkError(f"[crv] {crv} does not match [alg] {alg} for an EC key")
    try:
        x = _b64_field(data, "x")
        y = _b64_field(data, "y")
    except ValueError as exc:
        raise JwkError("Jwks EC [x] or [y] field is an invalid Base64.") from exc
    try:
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve).public_key()
    except ValueError as exc:
        raise JwkError("Jwks EC [x] and [y] fields have a parse error.") from exc
    return Jwk("EC", key, kid, alg, crv,
               _fingerprint("EC", kid, alg, crv.encode() + b"|" + x + b"|" + y))


def _oct(data: dict[str, Any], kid: str | None, alg: str | None) -> Jwk:
    if alg is not None and alg not in HMAC_ALGS:
        raise JwkError("[alg] is not started with [HS] for an HMAC key")
    try:
        secret = _b64_field(data, "k")
    except ValueError as exc:
        raise JwkError("Jwks Oct key is an invalid Base64") from exc
    return Jwk("oct", secret, kid, alg, None, _fingerprint("oct", kid, alg, secret))


def _okp(data: dict[str, Any], kid: str | None, alg: str | None) -> Jwk:
    if alg is not None and alg != "EdDSA":
        raise JwkError("[alg] is not [EdDSA] for an OKP key")
    if data.get("crv") != "Ed25519":
        raise JwkError("[crv] field is not [Ed25519] for an OKP key")
    try:
        x = _b64_field(data, "x")
        key = ed25519.Ed25519PublicKey.from_public_bytes(x)
    except ValueError as exc:
        raise JwkError("Jwks OKP [x] field is missing or has a parse error") from exc
    return Jwk("OKP", key, kid, alg, "Ed25519", _fingerprint("OKP", kid, alg, x))


_BY_KTY = {"RSA": _rsa, "EC": _ec, "oct": _oct, "OKP": _okp}


def parse_jwk(data: dict[str, Any]) -> Jwk:
    """One JWK object -> a usable key, or ``JwkError`` with the reason."""
    kty = data.get("kty")
    if kty is None:
        raise JwkError("[kty] is missing in [keys]")
    if not isinstance(kty, str):
        raise JwkError("[kty] field is not a string")
    kid = data.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwkError("[kid] field is not a string")
    alg = data.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise JwkError("[alg] field is not a string")
    use = data.get("use")
    if use is not None and use != "sig":
        raise JwkError(f"[use] is {use!r}, not 'sig'")
    parser = _BY_KTY.get(kty)
    if parser is None:
        raise JwkError(f"[kty] {kty!r} is not supported")
    return parser(data, kid, alg)


def _x509_map(data: dict[str, Any]) -> KeySet:
    keys: list[Jwk] = []
    skipped: list[str] = []
    for kid, pem in data.items():
        try:
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
            public = cert.public_key()
        except ValueError:
            skipped.append(f"kid {kid!r}: not a PEM certificate")
            continue
        if not isinstance(public, rsa.RSAPublicKey):
            skipped.append(f"kid {kid!r}: certificate key is not RSA")
            continue
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        keys.append(Jwk("RSA", public, kid, "RS256", None, _fingerprint("RSA", kid, "RS256", der)))
    return KeySet.of(keys, skipped)


def parse_jwks(text: str | bytes) -> KeySet:
    """Parse a key set; never raises. A ``KeySet`` with ``error`` set has no usable key."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting: at most 1 MiB deep
        return KeySet.failed(JWKS_PARSE_ERROR)
    if not isinstance(data, dict):
        return KeySet.failed(JWKS_PARSE_ERROR)
    if "keys" not in data:
        if data and all(isinstance(v, str) and "BEGIN CERTIFICATE" in v for v in data.values()):
            return _x509_map(data)
        return KeySet.failed(JWKS_NO_KEYS)
    raw_keys = data["keys"]
    if not isinstance(raw_keys, list):
        return KeySet.failed(JWKS_BAD_KEYS)
    keys: list[Jwk] = []
    skipped: list[str] = []
    for i, entry in enumerate(raw_keys):
        if not isinstance(entry, dict):
            skipped.append(f"keys[{i}]: not an object")
            continue
        try:
            keys.append(parse_jwk(entry))
        except JwkError as exc:
            kid = entry.get("kid")
            label = f"keys[{i}]" + (f" (kid {kid!r})" if isinstance(kid, str) else "")
            skipped.append(f"{label}: {exc}")
    return KeySet.of(keys, skipped)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")
