"""Minting, unverified decoding and inspection warnings."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz.tools import jwks, keys, token
from authz.tools.keys import ToolError

NOW = 1_700_000_000


def b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def craft(header: dict[str, Any], payload: dict[str, Any], sig: str = "c2ln") -> str:
    return f"{b64(header)}.{b64(payload)}.{sig}"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800), ("1h30m", 5400),
     (" 2m ", 120), ("0s", 0)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert token.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1w", "h", "-5m", "1.5h", "1 h", "m30", "1h-", "\u0661h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ToolError, match="duration"):
        token.parse_duration(text)


def test_parse_duration_signed_and_bounded() -> None:
    assert token.parse_duration("-30s", signed=True) == -30
    assert token.parse_duration("+2m", signed=True) == 120
    with pytest.raises(ToolError, match="longer than 100 years"):
        token.parse_duration("40000d")
    with pytest.raises(ToolError, match="too long"):
        token.parse_duration("1" * 5000)


def test_parse_claims() -> None:
    claims = token.parse_claims(["email=a@b.c", "note=x=y", "empty="],
                                ['groups=["a","b"]', "admin=true", 'ctx={"n":1}'])
    assert claims == {"email": "a@b.c", "note": "x=y", "empty": "", "groups": ["a", "b"],
                      "admin": True, "ctx": {"n": 1}}


@pytest.mark.parametrize(
    ("pairs", "json_pairs", "message"),
    [
        (["novalue"], [], "--claim 'novalue': expected NAME=VALUE"),
        (["=v"], [], "expected NAME=VALUE"),
        (["exp=1"], [], "--claim exp: set by its own flag"),
        ([], ["aud=[1]"], "--claim-json aud: set by its own flag"),
        (["a=1"], ["a=2"], "--claim-json a: claim given more than once"),
        ([], ["g=[a]"], "--claim-json g: value is not JSON"),
    ],
)
def test_parse_claims_rejects(pairs: list[str], json_pairs: list[str], message: str) -> None:
    with pytest.raises(ToolError, match=message):
        token.parse_claims(pairs, json_pairs)


def test_build_claims_audiences_and_times() -> None:
    one = token.build_claims(iss="i", sub="s", now=NOW, ttl=60, aud=["a"])
    assert one == {"iss": "i", "sub": "s", "aud": "a", "iat": NOW, "exp": NOW + 60}
    several = token.build_claims(iss="i", sub="s", now=NOW, ttl=60, aud=["a", "b"],
                                 nbf_offset=-30, extra={"x": 1})
    assert several["aud"] == ["a", "b"]
    assert several["nbf"] == NOW - 30
    assert several["x"] == 1
    assert "aud" not in token.build_claims(iss="i", sub="s", now=NOW, ttl=60)
    with pytest.raises(ToolError, match="--ttl must be positive"):
        token.build_claims(iss="i", sub="s", now=NOW, ttl=0)
    with pytest.raises(ToolError, match="claim iss is set by its own flag"):
        token.build_claims(iss="i", sub="s", now=NOW, ttl=1, extra={"iss": "evil"})


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (rsa.generate_private_key(65537, 2048), None),
        (rsa.generate_private_key(65537, 2048), "PS256"),
        (rsa.generate_private_key(65537, 2048), "RS512"),
        (ec.generate_private_key(ec.SECP256R1()), None),
        (ec.generate_private_key(ec.SECP384R1()), None),
        (ec.generate_private_key(ec.SECP521R1()), None),
        (ed25519.Ed25519PrivateKey.generate(), None),
    ],
    ids=["rs256", "ps256", "rs512", "es256", "es384", "es512", "eddsa"],
)
def test_mint_verifies_with_pyjwt_and_jwks(key: keys.PrivateKey, alg: str | None) -> None:
    claims = token.build_claims(iss="https://issuer.test", sub="alice", now=NOW, ttl=3600,
                                aud=["shop"], extra={"groups": ["a"]})
    minted = token.mint(key, claims, alg=alg)
    entry = jwks.jwk_entry(key, alg=alg)
    header = jwt.get_unverified_header(minted)
    assert header["kid"] == entry["kid"] == jwks.key_thumbprint(key)
    assert header["alg"] == entry["alg"]
    assert header["typ"] == "JWT"
    jwk = jwt.PyJWKSet.from_dict(jwks.jwks_document([entry]))[header["kid"]]
    decoded = jwt.decode(minted, jwk.key, algorithms=[entry["alg"]], audience="shop",
                         issuer="https://issuer.test", options={"verify_exp": False})
    assert decoded == claims


def test_mint_kid_override() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    minted = token.mint(key, {"sub": "s"}, kid="mine")
    assert jwt.get_unverified_header(minted)["kid"] == "mine"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "ES384"])
def test_mint_refuses_mismatched_alg(alg: str) -> None:
    with pytest.raises(ToolError, match=alg if alg != "none" else "never allowed"):
        token.mint(ec.generate_private_key(ec.SECP256R1()), {"sub": "s"}, alg=alg)


def test_decode_unverified_round_trip() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    minted = token.mint(key, {"sub": "s", "exp": NOW + 10})
    decoded = token.decode_unverified(minted)
    assert decoded.header["alg"] == "ES256"
    assert decoded.payload == {"sub": "s", "exp": NOW + 10}
    assert decoded.signing_input == minted.rsplit(".", 1)[0].encode()
    assert len(decoded.signature) == 64
    assert "signature" not in repr(decoded)
    assert token.decode_unverified(f"Bearer {minted}\n").payload == decoded.payload


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.b.c.d.e", "encrypted JWT"),
        ("abc", "1 part"),
        ("a.b", "2 part"),
        (f"{b64({'alg': 'none'})}.%%%.sig", "payload is not base64url"),
        (f"{b64({'alg': 'none'})}.{b64({})}.a", "signature is not base64url"),
        (f"bm90anNvbg.{b64({})}.", "header is not JSON"),
        (f"{b64([1])}.{b64({})}.", "header is JSON but not an object"),
        (f"{b64({'alg': 'none'})}.{b64('s')}.", "payload is JSON but not an object"),
    ],
)
def test_decode_unverified_rejects(text: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        token.decode_unverified(text)


def report(header: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    return token.inspect_report(token.decode_unverified(craft(header, payload)), NOW)


def test_clean_token_has_no_warnings() -> None:
    got = report({"alg": "RS256", "kid": "k"}, {"exp": NOW + 60, "nbf": NOW - 1})
    assert got["warnings"] == []
    assert got["expires_in_seconds"] == 60
    assert got["signature_verified"] is False
    assert "WITHOUT verifying" in got["note"]


@pytest.mark.parametrize(
    ("header", "payload", "expected"),
    [
        ({"alg": "none", "kid": "k"}, {"exp": NOW + 5}, "alg is 'none'"),
        ({"alg": "None", "kid": "k"}, {"exp": NOW + 5}, "unsigned"),
        ({"kid": "k"}, {"exp": NOW + 5}, "alg is 'none' or missing"),
        ({"alg": "RS256", "kid": "k"}, {"exp": NOW - 10}, "expired 10 second(s) ago"),
        ({"alg": "RS256", "kid": "k"}, {"exp": NOW}, "expired 0 second(s) ago"),
        ({"alg": "RS256", "kid": "k"}, {"exp": NOW + 5, "nbf": NOW + 30},
         "nbf is 30 second(s) in the future"),
        ({"alg": "RS256"}, {"exp": NOW + 5}, "no kid in header"),
        ({"alg": "RS256", "kid": "k"}, {}, "no exp claim"),
        ({"alg": "RS256", "kid": "k"}, {"exp": "soon"}, "exp is not a number"),
        ({"alg": "RS256", "kid": "k"}, {"exp": True}, "exp is not a number"),
        ({"alg": "RS256", "kid": "k"}, {"exp": NOW + 5, "nbf": "x"}, "nbf is not a number"),
    ],
)
def test_inspect_warnings(header: dict[str, Any], payload: dict[str, Any], expected: str) -> None:
    got = report(header, payload)
    assert len(got["warnings"]) == 1, got["warnings"]
    assert expected in got["warnings"][0]


def test_expired_report_has_negative_expiry_and_no_signature() -> None:
    text = craft({"alg": "RS256", "kid": "k"}, {"exp": NOW - 100}, sig="U0lHTkFUVVJF")
    got = token.inspect_report(token.decode_unverified(text), NOW)
    assert got["expires_in_seconds"] == -100
    dumped = json.dumps(got)
    assert "U0lHTkFUVVJF" not in dumped
    assert "SIGNATURE" not in dumped
    assert "expires_in_seconds" not in report({"alg": "RS256", "kid": "k"}, {})


def test_every_problem_at_once() -> None:
    got = report({"alg": "none"}, {"nbf": NOW + 100})
    assert len(got["warnings"]) == 4
