"""Mint test JWTs and look inside any JWT without trusting it.

Minting enforces the same alg/key fit a verifier does, so a token that mints here
fails only for policy reasons, not for a mismatched key. Inspection never verifies:
``decode_unverified`` is the single place tokens are split, so a later verify step
(e.g. against a policy's JWKS) can reuse its signing input and signature.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from authz.tools.jwks import check_alg, default_alg, key_thumbprint
from authz.tools.keys import PrivateKey, ToolError

__all__ = [
    "DecodedToken",
    "build_claims",
    "decode_unverified",
    "inspect_report",
    "mint",
    "parse_claims",
    "parse_duration",
    "warnings_for",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SECONDS = re.compile(r"[0-9]+")
_DURATION = re.compile(r"(?:[0-9]+[smhd])+")
_PART = re.compile(r"([0-9]+)([smhd])")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# Set by dedicated flags; letting --claim override them would make flags lie.
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf"})
MAX_DURATION_SECONDS = 100 * 365 * 86400


def parse_duration(text: str, *, signed: bool = False) -> int:
    """Seconds in ``90``, ``30s``, ``15m``, ``1h``, ``7d`` or ``1h30m``.

    ``signed`` allows a leading ``-``/``+`` (an nbf offset may point to the past).
    """
    value = text.strip()
    sign = 1
    if signed and value[:1] in ("-", "+"):
        sign = -1 if value[0] == "-" else 1
        value = value[1:]
    if len(value) > 32:
        raise ToolError(f"duration {text[:32]!r}... is too long")
    if _SECONDS.fullmatch(value):
        seconds = int(value)
    elif _DURATION.fullmatch(value):
        seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(value))
    else:
        raise ToolError(f"duration {text!r} is not like 90, 30s, 15m, 1h, 7d or 1h30m")
    if seconds > MAX_DURATION_SECONDS:
        raise ToolError(f"duration {text!r} is longer than 100 years")
    return sign * seconds


def parse_claims(pairs: Sequence[str] = (), json_pairs: Sequence[str] = ()) -> dict[str, Any]:
    """Extra claims from ``k=v`` (string) and ``k=JSON`` arguments."""
    claims: dict[str, Any] = {}

    def add(item: str, flag: str, is_json: bool) -> None:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ToolError(f"{flag} {item!r}: expected NAME=VALUE")
        if name in RESERVED_CLAIMS:
            raise ToolError(f"{flag} {name}: set by its own flag "
                            "(--iss, --sub, --aud, --ttl, --nbf-offset)")
        if name in claims:
            raise ToolError(f"{flag} {name}: claim given more than once")
        if is_json:
            try:
                claims[name] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ToolError(f"{flag} {name}: value is not JSON: {exc.msg} "
                                f"at column {exc.colno}") from None
        else:
            claims[name] = raw

    for item in pairs:
        add(item, "--claim", False)
    for item in json_pairs:
        add(item, "--claim-json", True)
    return claims


def build_claims(*, iss: str, sub: str, now: int, ttl: int, aud: Sequence[str] = (),
                 nbf_offset: int | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Registered claims first, then extras; one audience is a string, several a list."""
    if ttl <= 0:
        raise ToolError("--ttl must be positive")
    claims: dict[str, Any] = {"iss": iss, "sub": sub}
    if len(aud) == 1:
        claims["aud"] = aud[0]
    elif aud:
        claims["aud"] = list(aud)
    claims["iat"] = now
    if nbf_offset is not None:
        claims["nbf"] = now + nbf_offset
    claims["exp"] = now + ttl
    for name, value in (extra or {}).items():
        if name in RESERVED_CLAIMS:
            raise ToolError(f"claim {name} is set by its own flag")
        claims[name] = value
    return claims


def mint(key: PrivateKey, claims: Mapping[str, Any], *, kid: str | None = None,
         alg: str | None = None) -> str:
    """A compact JWS; kid defaults to the key's RFC 7638 thumbprint."""
    algorithm = check_alg(key, alg) if alg is not None else default_alg(key)
    headers = {"kid": kid if kid is not None else key_thumbprint(key), "typ": "JWT"}
    return jwt.encode(dict(claims), key, algorithm=algorithm, headers=headers)


@dataclass(frozen=True)
class DecodedToken:
    """A JWS split and decoded, not verified. Keep ``signature`` out of any output."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)


def _b64decode(part: str, what: str) -> bytes:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ToolError(f"token {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise ToolError(f"token {what} is not base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ToolError(f"token {what} is not JSON") from None
    if not isinstance(value, dict):
        raise ToolError(f"token {what} is JSON but not an object")
    return value


def decode_unverified(token: str) -> DecodedToken:
    """Split a compact JWS and decode header and payload; the signature is NOT checked."""
    text = token.strip()
    if text[:7].lower() == "bearer ":
        text = text[7:].strip()
    parts = text.split(".")
    if len(parts) == 5:
        raise ToolError("token has 5 parts: it is an encrypted JWT (JWE) and cannot be "
                        "inspected without the decryption key")
    if len(parts) != 3:
        raise ToolError(f"token has {len(parts)} part(s); a JWT has 3 separated by '.'")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    payload = _json_object(_b64decode(parts[1], "payload"), "payload")
    signature = _b64decode(parts[2], "signature")
    return DecodedToken(header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def warnings_for(decoded: DecodedToken, now: int) -> list[str]:
    """What a reader should notice before trusting or debugging the token."""
    found: list[str] = []
    alg = decoded.header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        found.append("alg is 'none' or missing: the token is unsigned and no verifier "
                     "should accept it")
    if "kid" not in decoded.header:
        found.append("no kid in header: verifiers must try every key in the JWKS")
    if "exp" not in decoded.payload:
        found.append("no exp claim: the token never expires")
    else:
        exp = _number(decoded.payload["exp"])
        if exp is None:
            found.append("exp is not a number: verifiers reject the token")
        elif exp <= now:
            found.append(f"expired {int(now - exp)} second(s) ago")
    if "nbf" in decoded.payload:
        nbf = _number(decoded.payload["nbf"])
        if nbf is None:
            found.append("nbf is not a number: verifiers reject the token")
        elif nbf > now:
            found.append(f"nbf is {int(nbf - now)} second(s) in the future: not valid yet")
    return found


def inspect_report(decoded: DecodedToken, now: int) -> dict[str, Any]:
    """The JSON ``token inspect`` prints; the signature bytes are deliberately absent."""
    report: dict[str, Any] = {
        "signature_verified": False,
        "note": "decoded WITHOUT verifying the signature; do not trust these claims",
        "header": decoded.header,
        "payload": decoded.payload,
    }
    exp = _number(decoded.payload.get("exp"))
    if exp is not None:
        report["expires_in_seconds"] = int(exp - now)
    report["warnings"] = warnings_for(decoded, now)
    return report
