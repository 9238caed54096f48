"""The attack corpus: RFC 8725's list and what fuzzing found, as named requests.

Two issuers, each with its own keys, and a policy that copies a claim into a
header. Every attack must be answered 401 (or the exact answer Envoy gives where
it is stricter), never 200, never a 5xx or a gRPC error. ``CONTROLS`` are the
requests that must pass, so a 401 means the attack failed, not the rig.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

ISS_A, ISS_B = "https://a.example", "https://b.example"
MAX_TOKEN = 60 * 1024


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def enc(value: Any) -> str:
    return b64(json.dumps(value).encode())


def _int(n: int, size: int | None = None) -> str:
    return b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class Keys:
    a: rsa.RSAPrivateKey
    b: rsa.RSAPrivateKey
    ec_a: ec.EllipticCurvePrivateKey
    attacker: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> Keys:
        def new() -> rsa.RSAPrivateKey:
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(new(), new(), ec.generate_private_key(ec.SECP256R1()), new())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    nums = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": _int(nums.n),
            "e": _int(nums.e)}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    nums = key.public_key().public_numbers()
    return {"kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
            "x": _int(nums.x, 32), "y": _int(nums.y, 32)}


def jwks_a(keys: Keys) -> dict[str, Any]:
    return {"keys": [rsa_jwk(keys.a, "a-1"), ec_jwk(keys.ec_a, "a-ec")]}


def jwks_b(keys: Keys) -> dict[str, Any]:
    return {"keys": [rsa_jwk(keys.b, "b-1")]}


def policy(keys: Keys) -> str:
    """Two issuers with inline keys; issuer A's ``name`` claim goes to ``x-name``."""
    return json.dumps({
        "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "attacks", "namespace": "default"},
        "spec": {"jwtRules": [
            {"issuer": ISS_A, "jwks": json.dumps(jwks_a(keys)),
             "outputClaimToHeaders": [{"header": "x-name", "claim": "name"}]},
            {"issuer": ISS_B, "jwks": json.dumps(jwks_b(keys))},
        ]},
    })


def raw_token(header: str, payload: str, key: rsa.RSAPrivateKey | None) -> str:
    """RS256 over exactly these texts (``key`` None: no signature at all)."""
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    if key is None:
        return signing_input + "."
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(sig)}"


def signed(claims: Mapping[str, Any], key: rsa.RSAPrivateKey, kid: str = "a-1",
           **header: Any) -> str:
    return raw_token(json.dumps({"alg": "RS256", "kid": kid, **header}), json.dumps(claims), key)


def hs256(header: Mapping[str, Any], claims: Mapping[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def good_claims(iss: str = ISS_A, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss, "sub": "alice", "iat": now, "exp": now + 3600, "name": "Alice", **extra}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def controls(keys: Keys) -> dict[str, dict[str, str]]:
    """Requests that must be allowed: the rig accepts what it should."""
    return {
        "good-a": bearer(signed(good_claims(), keys.a)),
        "good-b": bearer(signed(good_claims(ISS_B), keys.b, kid="b-1")),
        "no-token": {},
    }


def attacks(keys: Keys) -> dict[str, dict[str, str]]:
    """name -> request headers. Every one must be refused with 401."""
    claims = good_claims()
    now = int(time.time())
    pem = keys.a.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = keys.a.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk_text = json.dumps(rsa_jwk(keys.a, "a-1")).encode()
    valid = signed(claims, keys.a)
    head, payload, sig = valid.split(".")
    nested = "[" * 1_001 + "]" * 1_001
    out: dict[str, dict[str, str]] = {}
    # RFC 8725 2.1 / 3.1: "none" in every spelling, with and without a signature.
    for alg in ("none", "None", "NONE", "nOnE"):
        unsigned_part = f"{b64(json.dumps({'alg': alg, 'kid': 'a-1'}).encode())}.{payload}"
        out[f"alg-{alg}-empty-signature"] = bearer(unsigned_part + ".")
        out[f"alg-{alg}-with-signature"] = bearer(f"{unsigned_part}.{sig}")
    out["alg-missing"] = bearer(f"{enc({'kid': 'a-1'})}.{payload}.{sig}")
    out["alg-empty"] = bearer(f"{enc({'alg': ''})}.{payload}.{sig}")
    # RFC 8725 2.1: HS/RS confusion, the public key (in any encoding) as the HMAC secret.
    for name, secret in (("pem", pem), ("der", der), ("jwk", jwk_text), ("empty", b"")):
        out[f"hs256-with-public-key-{name}"] = bearer(
            hs256({"alg": "HS256", "kid": "a-1"}, claims, secret))
        out[f"hs256-no-kid-{name}"] = bearer(hs256({"alg": "HS256"}, claims, secret))
    # CVE-2022-21449 ("psychic signatures"): r = s = 0 must never verify.
    es_input = f"{enc({'alg': 'ES256', 'kid': 'a-ec'})}.{payload}"
    out["es256-zero-signature"] = bearer(f"{es_input}.{b64(bytes(64))}")
    out["es256-all-ones-signature"] = bearer(f"{es_input}.{b64(bytes([255]) * 64)}")
    # kid injection: path traversal, SQL, NUL, a huge kid; signed by the attacker.
    for name, kid in (("path-traversal", "../../../../../dev/null"),
                      ("sql", "a-1' OR '1'='1"), ("sql-union", "x' UNION SELECT 'key'--"),
                      ("nul", "a-1\x00"), ("url", "https://attacker.example/key"),
                      ("long", "k" * 10_000)):
        out[f"kid-{name}"] = bearer(signed(claims, keys.attacker, kid=kid))
        out[f"kid-{name}-hs256-empty-key"] = bearer(
            hs256({"alg": "HS256", "kid": kid}, claims, b""))
    # RFC 8725 3.10 / 7515 4.1.2-4.1.6: keys named by the token are never fetched or used.
    attacker_jwk = rsa_jwk(keys.attacker, "a-1")
    out["jwk-header-embedded-key"] = bearer(signed(claims, keys.attacker, jwk=attacker_jwk))
    out["jku-header"] = bearer(signed(claims, keys.attacker, jku="http://127.0.0.1:1/jwks"))
    out["x5u-header"] = bearer(signed(claims, keys.attacker, x5u="http://127.0.0.1:1/cert"))
    out["x5c-header"] = bearer(signed(claims, keys.attacker, x5c=[b64(der)]))
    # Shapes: JWE (5 parts), 1, 2, 4 and 6 parts, empty parts, empty signature.
    tail = f"{b64(b'i' * 12)}.{b64(b'c' * 40)}.{b64(b't' * 16)}"
    out["jwe-5-parts"] = bearer(
        f"{enc({'alg': 'RSA-OAEP', 'enc': 'A256GCM'})}.{b64(b'k' * 256)}.{tail}")
    out["jwe-dir-5-parts"] = bearer(f"{enc({'alg': 'dir', 'enc': 'A128GCM'})}..{tail}")
    out["1-part"] = bearer(head)
    out["2-parts"] = bearer(f"{head}.{payload}")
    out["4-parts"] = bearer(f"{valid}.{sig}")
    out["6-parts"] = bearer(f"{valid}.{valid}")
    out["empty-signature"] = bearer(f"{head}.{payload}.")
    out["signature-of-another-token"] = bearer(
        f"{head}.{payload}.{signed(good_claims(sub='bob'), keys.a).split('.')[2]}")
    out["truncated-signature"] = bearer(f"{head}.{payload}.{sig[:-4]}")
    out["payload-swapped"] = bearer(
        f"{head}.{b64(json.dumps(good_claims(sub='admin')).encode())}.{sig}")
    # Oversized: just past the limit, and far past it.
    out["oversized"] = bearer(signed(good_claims(pad="x" * MAX_TOKEN), keys.a))
    out["oversized-garbage"] = bearer("a" * (MAX_TOKEN + 1))
    # Deep nesting in the header and in the claims (no key needed).
    out["deep-nesting-header"] = bearer(f"{b64(nested.encode())}.e30.e30")
    out["deep-nesting-claims"] = bearer(raw_token(
        '{"alg":"RS256","kid":"a-1"}', json.dumps(claims)[:-1] + ',"x":' + nested + "}",
        keys.a))
    objects = '{"a":' * 3000 + "1" + "}" * 3000
    out["deep-nesting-objects"] = bearer(f"{b64(objects.encode())}.e30.e30")
    # Duplicate members, signed by the real key: the reader must not pick one.
    out["duplicate-alg"] = bearer(raw_token(
        '{"alg":"HS256","alg":"RS256","kid":"a-1"}', json.dumps(claims), keys.a))
    out["duplicate-iss-last-right"] = bearer(raw_token(
        '{"alg":"RS256","kid":"a-1"}',
        json.dumps(claims)[:-1].replace('"iss"', '"iss": "https://evil.example", "iss"', 1)
        + "}", keys.a))
    out["duplicate-sub"] = bearer(raw_token(
        '{"alg":"RS256","kid":"a-1"}', json.dumps(claims)[:-1] + ', "sub": "admin"}', keys.a))
    # crit: an extension we do not implement (RFC 7515 4.1.11), signed by the real key.
    out["crit-unknown"] = bearer(signed(claims, keys.a, crit=["http://x.example/ext"],
                                        **{"http://x.example/ext": True}))
    out["crit-b64-false"] = bearer(signed(claims, keys.a, crit=["b64"], b64=False))
    # Cross-issuer: issuer A's key signs a token claiming issuer B (and the reverse).
    out["cross-issuer-a-key-b-claim"] = bearer(signed(good_claims(ISS_B), keys.a))
    out["cross-issuer-a-key-b-kid"] = bearer(signed(good_claims(ISS_B), keys.a, kid="b-1"))
    out["cross-issuer-b-key-a-claim"] = bearer(signed(claims, keys.b, kid="b-1"))
    out["unknown-issuer"] = bearer(signed(good_claims("https://evil.example"), keys.a))
    # Claims headed for a header: CR, LF, NUL and other control characters.
    for name, value in (("crlf", "Alice\r\nx-admin: true"), ("lf", "a\nb"), ("cr", "a\rb"),
                        ("nul", "a\x00b"), ("esc", "a\x1bb"), ("del", "a\x7fb")):
        out[f"claim-header-{name}"] = bearer(signed(good_claims(name=value), keys.a))
    # Time and encoding.
    out["expired"] = bearer(signed(good_claims(exp=now - 3600), keys.a))
    out["not-yet-valid"] = bearer(signed(good_claims(nbf=now + 3600), keys.a))
    out["exp-string"] = bearer(signed(good_claims(exp=str(now + 3600)), keys.a))
    out["exp-nan"] = bearer(raw_token('{"alg":"RS256","kid":"a-1"}',
                                      '{"iss":"' + ISS_A + '","exp":NaN}', keys.a))
    out["header-utf16"] = bearer(f"{b64(json.dumps({'alg': 'RS256'}).encode('utf-16'))}"
                                 f".{payload}.{sig}")
    out["header-not-object"] = bearer(f"{enc(['RS256'])}.{payload}.{sig}")
    out["standard-base64-alphabet"] = bearer(
        valid.replace("-", "+").replace("_", "/") if ("-" in valid or "_" in valid)
        else valid + "+")
    # Where the bad token sits: beside a good one, in the query.
    out["good-and-forged-token"] = {
        "authorization": f"Bearer {valid}, Bearer {signed(claims, keys.attacker)}"}
    return out


def query_attacks(keys: Keys) -> dict[str, str]:
    """name -> path: tokens in ``access_token``."""
    forged = signed(good_claims(), keys.attacker)
    return {
        "query-forged": f"/r?access_token={forged}",
        # The first access_token is the one read (Envoy's rule): a good one after a
        # forgery does not rescue it.
        "query-forged-then-good": (f"/r?access_token={forged}"
                                   f"&access_token={signed(good_claims(), keys.a)}"),
        "query-and-header": f"/r?access_token={forged}&x=1",
    }
