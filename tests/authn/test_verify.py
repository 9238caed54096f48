from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import serialization

from authz.authn.keys import parse_jwks
from authz.authn.verify import (
    MAX_JSON_DEPTH,
    MAX_TOKEN_BYTES,
    JwtError,
    Status,
    audience_allowed,
    check_time,
    json_depth_ok,
    parse_token,
    sanitize_audience,
    time_horizon,
    verify_signature,
)
from tests.authn.helpers import (
    NOW,
    b64,
    claims,
    ec_key,
    ed_key,
    hmac_key,
    jwks,
    rsa_key,
    unsigned,
)


def status_of(token: str) -> Status:
    try:
        parse_token(token)
    except JwtError as exc:
        return exc.status
    return Status.OK


@pytest.mark.parametrize("key", [
    rsa_key(), rsa_key(alg="RS384"), rsa_key(alg="RS512"), rsa_key(alg="PS256"),
    rsa_key(alg="PS384"), rsa_key(alg="PS512"), ec_key(), ec_key(alg="ES384"),
    ec_key(alg="ES512"), ed_key(), hmac_key(),
], ids=lambda k: k.alg)
def test_valid_signatures(key) -> None:  # type: ignore[no-untyped-def]
    token = key.sign(claims())
    status, used = verify_signature(parse_token(token), parse_jwks(jwks(key.jwk())))
    assert status is Status.OK and used is not None and used.kid == key.kid


def test_rsa_key_without_alg_accepts_rs_and_ps() -> None:
    keys = parse_jwks(jwks(rsa_key().jwk(with_alg=False)))
    for alg in ("RS256", "PS512"):
        signed = parse_token(rsa_key().sign(claims(), alg=alg))
        assert verify_signature(signed, keys)[0] is Status.OK


def test_bad_signature() -> None:
    key = rsa_key()
    token = key.sign(claims())
    head, _payload, _ = token.split(".")
    forged = f"{head}.{b64(json.dumps(claims(sub='admin')).encode())}.{token.split('.')[2]}"
    assert verify_signature(parse_token(forged), parse_jwks(jwks(key.jwk())))[0] is \
        Status.JWT_VERIFICATION_FAIL
    other = rsa_key(seed=1)
    assert verify_signature(parse_token(token), parse_jwks(jwks(other.jwk())))[0] is \
        Status.JWT_VERIFICATION_FAIL


def test_alg_none_is_rejected_at_parse() -> None:
    token = unsigned({"alg": "none"}, claims(), b"")
    assert status_of(token) is Status.JWT_BAD_FORMAT  # empty signature: two sections
    token = unsigned({"alg": "none"}, claims(), b"x")
    assert status_of(token) is Status.JWT_HEADER_NOT_IMPLEMENTED_ALG


def test_hs256_signed_with_rsa_public_key_is_never_accepted() -> None:
    key = rsa_key()
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = b64(json.dumps(claims()).encode())
    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    signed = parse_token(f"{header}.{payload}.{b64(sig)}")
    # RSA key pinned to RS256: filtered out by alg -> no key fits.
    assert verify_signature(signed, parse_jwks(jwks(key.jwk())))[0] is \
        Status.JWKS_KID_ALG_UNMATCH
    # RSA key without alg: it is "tried" but never with HMAC -> verification fails.
    assert verify_signature(signed, parse_jwks(jwks(key.jwk(with_alg=False))))[0] is \
        Status.JWT_VERIFICATION_FAIL


def test_kid_selection() -> None:
    a, b = rsa_key("a"), rsa_key("b", seed=1)
    keys = parse_jwks(jwks(a.jwk(), b.jwk()))
    status, used = verify_signature(parse_token(b.sign(claims())), keys)
    assert status is Status.OK and used is not None and used.kid == "b"
    unknown = parse_token(b.sign(claims(), kid="zzz"))
    assert verify_signature(unknown, keys)[0] is Status.JWKS_KID_ALG_UNMATCH
    no_kid = parse_token(b.sign(claims(), kid=False))
    assert no_kid.jwt.kid is None
    status, used = verify_signature(no_kid, keys)
    assert status is Status.OK and used is not None and used.kid == "b"


def test_key_without_kid_is_tried_for_any_token_kid() -> None:
    key = rsa_key(kid=None)
    token = key.sign(claims(), kid="whatever")
    assert verify_signature(parse_token(token), parse_jwks(jwks(key.jwk())))[0] is Status.OK


def test_key_alg_pins_token_alg() -> None:
    key = rsa_key(alg="PS256")
    token = key.sign(claims(), alg="RS256")
    assert verify_signature(parse_token(token), parse_jwks(jwks(key.jwk())))[0] is \
        Status.JWKS_KID_ALG_UNMATCH


def test_ec_curve_mismatch_fails() -> None:
    k384 = ec_key(alg="ES384")
    jwk = k384.jwk(with_alg=False)
    token = ec_key(alg="ES256").sign(claims(), kid=k384.kid)
    assert verify_signature(parse_token(token), parse_jwks(jwks(jwk)))[0] is \
        Status.JWT_VERIFICATION_FAIL


def test_ed25519_wrong_length() -> None:
    key = ed_key()
    token = key.sign(claims())
    head, payload, _ = token.split(".")
    signed = parse_token(f"{head}.{payload}.{b64(b'short')}")
    assert verify_signature(signed, parse_jwks(jwks(key.jwk())))[0] is \
        Status.JWT_ED25519_SIGNATURE_WRONG_LENGTH


@pytest.mark.parametrize(("token", "status"), [
    ("TokenInvalid", Status.JWT_BAD_FORMAT),
    ("a.b", Status.JWT_BAD_FORMAT),
    ("a.b.c.d", Status.JWT_BAD_FORMAT),
    ("!!.b.c", Status.JWT_HEADER_BAD_BASE64),
    (f"{b64(b'nope')}.b.c", Status.JWT_HEADER_BAD_JSON),
    (f"{b64(b'[1]')}.b.c", Status.JWT_HEADER_BAD_JSON),
    (unsigned({"typ": "JWT"}, {}), Status.JWT_HEADER_BAD_ALG),
    (unsigned({"alg": 5}, {}), Status.JWT_HEADER_BAD_ALG),
    (unsigned({"alg": "RS1"}, {}), Status.JWT_HEADER_NOT_IMPLEMENTED_ALG),
    (unsigned({"alg": "RS256", "kid": 1}, {}), Status.JWT_HEADER_BAD_KID),
    (b64(b'{"alg":"RS256"}') + ".!!.c", Status.JWT_PAYLOAD_BAD_BASE64),
    (unsigned({"alg": "RS256"}, "nope"), Status.JWT_PAYLOAD_BAD_JSON),
    # JOSE JSON is UTF-8; json.loads alone would have guessed UTF-16 and accepted it.
    (b64(b'{"alg":"RS256"}') + "." + b64('{"sub":"x"}'.encode("utf-16")) + ".c",
     Status.JWT_PAYLOAD_BAD_JSON),
    (b64(b'{"alg":"RS256"}') + ".e30.c", Status.JWT_SIGNATURE_BAD_BASE64),
    # An object alone is read by the scanner in one call; anything around it goes
    # through the whole decoder: whitespace is JSON, anything else is not.
    (unsigned({"alg": "RS256"}, ' {"sub": "x"}\n'), Status.OK),
    (unsigned({"alg": "RS256"}, '{"sub": "x"}}'), Status.JWT_PAYLOAD_BAD_JSON),
    (unsigned({"alg": "RS256"}, '{"sub": "x"} {}'), Status.JWT_PAYLOAD_BAD_JSON),
    (unsigned({"alg": "RS256"}, '{"exp": NaN}'), Status.JWT_PAYLOAD_BAD_JSON),
    (unsigned({"alg": "RS256"}, '{"sub": "x"'), Status.JWT_PAYLOAD_BAD_JSON),
    (unsigned({"alg": "RS256"}, '{}'), Status.OK),
    (unsigned({"alg": "RS256"}, {"iss": 1}), Status.JWT_PAYLOAD_ISS_NOT_STRING),
    (unsigned({"alg": "RS256"}, {"sub": None}), Status.JWT_PAYLOAD_SUB_NOT_STRING),
    (unsigned({"alg": "RS256"}, {"iat": "1"}), Status.JWT_PAYLOAD_IAT_NOT_INTEGER),
    (unsigned({"alg": "RS256"}, {"iat": True}), Status.JWT_PAYLOAD_IAT_NOT_INTEGER),
    (unsigned({"alg": "RS256"}, {"nbf": -1}), Status.JWT_PAYLOAD_NBF_OUT_OF_RANGE),
    (unsigned({"alg": "RS256"}, {"exp": 2**64}), Status.JWT_PAYLOAD_EXP_OUT_OF_RANGE),
    (unsigned({"alg": "RS256"}, {"jti": 5}), Status.JWT_PAYLOAD_JTI_NOT_STRING),
    (unsigned({"alg": "RS256"}, {"aud": ["a", 1]}), Status.JWT_PAYLOAD_AUD_NOT_STRING_OR_LIST),
    (unsigned({"alg": "RS256"}, {"aud": 3}), Status.JWT_PAYLOAD_AUD_NOT_STRING_OR_LIST),
    (unsigned({"alg": "RS256"}, {}).rsplit(".", 1)[0] + ".!!", Status.JWT_SIGNATURE_BAD_BASE64),
])
def test_malformed_tokens(token: str, status: Status) -> None:
    assert status_of(token) is status


def test_empty_sections_are_skipped_like_envoy() -> None:
    token = rsa_key().sign(claims())
    head, payload, sig = token.split(".")
    assert status_of(f"{head}..{payload}.{sig}") is Status.OK


def test_oversized_token_rejected_before_parsing() -> None:
    assert status_of("a" * (MAX_TOKEN_BYTES + 1)) is Status.JWT_BAD_FORMAT


def test_float_times_are_truncated() -> None:
    jwt = parse_token(unsigned({"alg": "RS256"}, {"exp": 10.9})).jwt
    assert jwt.exp == 10


@pytest.mark.parametrize(("payload", "status"), [
    ({"exp": int(NOW) - 61}, Status.JWT_EXPIRED),
    ({"exp": int(NOW) - 60}, Status.OK),         # inside the 60 s skew
    ({"nbf": int(NOW) + 61}, Status.JWT_NOT_YET_VALID),
    ({"nbf": int(NOW) + 60}, Status.OK),
    ({}, Status.OK),                              # no exp: never expires
])
def test_time_window(payload: dict[str, int], status: Status) -> None:
    assert check_time(parse_token(unsigned({"alg": "RS256"}, payload)).jwt, NOW) is status


@pytest.mark.parametrize("payload", [
    {"exp": int(NOW) + 100}, {"exp": int(NOW) - 60}, {"exp": int(NOW) - 61},
    {"nbf": int(NOW) + 100}, {"nbf": int(NOW) + 60}, {"nbf": int(NOW) + 100, "exp": int(NOW) + 200},
    {},
])
def test_time_horizon_is_the_first_moment_check_time_changes(payload: dict[str, int]) -> None:
    jwt = parse_token(unsigned({"alg": "RS256"}, payload)).jwt
    now = NOW + 0.25
    until = time_horizon(jwt, now)
    before = check_time(jwt, now)
    # Unchanged over every whole second up to the horizon, changed at it.
    for t in (now, *range(int(now) + 1, int(min(until, now + 400)))):
        assert check_time(jwt, t) is before
    if until != float("inf"):
        assert until > now and check_time(jwt, until) is not before
        assert check_time(jwt, until - 0.001) is before


def test_audiences() -> None:
    assert sanitize_audience("https://foo.com/") == "foo.com"
    assert sanitize_audience("http://foo") == "foo"
    allowed = frozenset({sanitize_audience("https://api.example.com/")})
    jwt = parse_token(unsigned({"alg": "RS256"}, {"aud": ["x", "http://api.example.com"]})).jwt
    assert audience_allowed(jwt, allowed)
    assert not audience_allowed(parse_token(unsigned({"alg": "RS256"}, {"aud": "y"})).jwt, allowed)
    assert not audience_allowed(parse_token(unsigned({"alg": "RS256"}, {})).jwt, allowed)
    assert audience_allowed(parse_token(unsigned({"alg": "RS256"}, {})).jwt, frozenset())


def test_padded_and_unpadded_sections_parse_alike() -> None:
    """Unpadded tokens take a shorter decoder; a padded one (which jwt_verify_lib
    also accepts) takes the strict one, and both read the same token."""
    token = rsa_key().sign(claims(aud="api"))
    padded = ".".join(s + "=" * (-len(s) % 4) for s in token.split("."))
    assert padded != token
    plain, slow = parse_token(token), parse_token(padded)
    same_segment = slow.jwt._replace(payload_segment=plain.jwt.payload_segment)
    assert (plain.jwt, plain.signature) == (same_segment, slow.signature)
    keys = parse_jwks(jwks(rsa_key().jwk()))
    assert verify_signature(plain, keys)[0] is Status.OK


def test_jwt_repr_never_shows_payload() -> None:
    token = rsa_key().sign(claims(secret="hunter2"))
    signed = parse_token(token)
    payload, signature = token.split(".")[1:]
    for shown in (repr(signed.jwt), repr(signed), str(signed)):
        assert "hunter2" not in shown and payload not in shown and signature not in shown


def test_a_parsed_token_is_immutable() -> None:
    """Caches and memos share one ``Jwt`` across requests: nothing may change it."""
    signed = parse_token(rsa_key().sign(claims()))
    with pytest.raises(AttributeError):
        signed.jwt.iss = "someone-else"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        signed.signature = b""  # type: ignore[misc]


# -- JOSE edge cases: nesting, duplicate members, crit, base64url ------------------


def rs256_raw(header: str, payload: str, key_seed: int = 0) -> str:
    """A token signed over exactly these header and payload texts (no re-encoding)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    signature = rsa_key(seed=key_seed).private.sign(
        signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


RSA_KEYS = parse_jwks(jwks(rsa_key().jwk()))


def verified(token: str) -> Status:
    try:
        signed = parse_token(token)
    except JwtError as exc:
        return exc.status
    return verify_signature(signed, RSA_KEYS)[0]


@pytest.mark.parametrize("depth", [1_001, 5_000, MAX_JSON_DEPTH + 1])
def test_deep_nesting_is_invalid_json_not_recursion(depth: int) -> None:
    """The headline: ``[[[...]]]`` used to raise RecursionError (gRPC INTERNAL)."""
    nested = "[" * depth + "]" * depth
    assert status_of(f"{b64(nested.encode())}.e30.e30") is Status.JWT_HEADER_BAD_JSON
    deep_header = b64(('{"alg":"RS256","x":' + nested + "}").encode())
    assert status_of(f"{deep_header}.e30.e30") is Status.JWT_HEADER_BAD_JSON
    deep_claims = '{"iss":"i","x":' + "{\"a\":" * depth + "1" + "}" * depth + "}"
    assert status_of(unsigned({"alg": "RS256"}, deep_claims)) is Status.JWT_PAYLOAD_BAD_JSON


def test_nesting_up_to_the_limit_is_read() -> None:
    depth = MAX_JSON_DEPTH - 1  # the claims object itself is one level
    payload = '{"x":' + "[" * depth + "]" * depth + "}"
    assert status_of(unsigned({"alg": "RS256"}, payload)) is Status.OK


@pytest.mark.parametrize("raw", [
    b'{"a":"' + b"[" * 500 + b'"}',                    # brackets inside a string
    b'{"a":"\\"' + b"{" * 500 + b'"}',                 # after an escaped quote
    b'{"a":[' + b"[]," * 500 + b"[]]}",                 # many, but shallow
])
def test_depth_scan_ignores_strings_and_counts_depth_not_brackets(raw: bytes) -> None:
    assert json_depth_ok(raw)
    assert json.loads(raw)


def test_depth_scan_sees_depth_past_strings() -> None:
    raw = b'{"s":"]]]]","x":' + b"[" * 70 + b"]" * 70 + b"}"
    assert not json_depth_ok(raw)


def test_recursion_in_the_decoder_is_a_bad_json_not_an_exception(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the depth scan misses, a RecursionError is still an invalid JSON."""
    import authz.authn.verify as verify

    monkeypatch.setattr(verify, "json_depth_ok", lambda raw, limit=0: True)
    nested = "[" * 20_000 + "]" * 20_000
    assert status_of(f"{b64(nested.encode())}.e30.e30") is Status.JWT_HEADER_BAD_JSON


@pytest.mark.parametrize(("header", "payload", "status"), [
    ('{"alg":"RS256","alg":"HS256"}', '{"iss":"i"}', Status.JWT_HEADER_BAD_JSON),
    ('{"alg":"RS256","kid":"rsa-1","kid":"rsa-1"}', '{"iss":"i"}', Status.JWT_HEADER_BAD_JSON),
    # first value wrong, last right: a reader keeping the last one would accept it
    ('{"alg":"RS256"}', '{"iss":"evil","iss":"issuer-1"}', Status.JWT_PAYLOAD_BAD_JSON),
    ('{"alg":"RS256"}', '{"iss":"i","o":{"a":1,"a":2}}', Status.JWT_PAYLOAD_BAD_JSON),
    ('{"alg":"RS256"}', '{"iss":"i","l":[{"a":1,"a":1}]}', Status.JWT_PAYLOAD_BAD_JSON),
    # the same name escaped differently is the same name
    ('{"alg":"RS256"}', '{"iss":"a","\\u0069ss":"b"}', Status.JWT_PAYLOAD_BAD_JSON),
    ('{"alg":"RS256"}', '{"iss":"i","o":{"a":1},"p":{"a":1}}', Status.OK),
])
def test_duplicate_member_names_are_refused(header: str, payload: str, status: Status) -> None:
    """RFC 7515 4 / RFC 8725 3.1: signed and valid, yet refused when a name repeats."""
    assert verified(rs256_raw(header, payload)) is status


@pytest.mark.parametrize("crit", [
    ["exp"], ["b64"], ["http://example.com/ext"], [], "b64", [1], None,
])
def test_any_crit_header_is_refused(crit: object) -> None:
    """RFC 7515 4.1.11: we implement no extension, so no ``crit`` can be honoured
    (Envoy ignores ``crit``: stricter on purpose)."""
    header = json.dumps({"alg": "RS256", "kid": "rsa-1", "crit": crit, "exp": 1, "b64": False})
    assert verified(rs256_raw(header, '{"iss":"i"}')) is Status.JWT_HEADER_UNSUPPORTED_CRIT


def test_a_valid_token_without_crit_verifies() -> None:
    assert verified(rs256_raw('{"alg":"RS256","kid":"rsa-1"}', '{"iss":"i"}')) is Status.OK


def _set_trailing_bits(segment: str) -> str:
    """The same bytes, spelled with the unused low bits of the last character set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 0b1111, 3: 0b11}[len(segment) % 4]
    last = alphabet.index(segment[-1])
    assert last & unused == 0
    return segment[:-1] + alphabet[last | unused]


def test_non_canonical_base64url_reads_like_envoy() -> None:
    """abseil's WebSafeBase64Unescape (Envoy) ignores the unused bits; so do we. Safe:
    the signature covers the header and payload *as sent*, so respelling either one
    breaks the signature, and a respelled signature is the same signature."""
    token = rs256_raw('{"alg":"RS256","kid":"rsa-1"}', '{"iss":"issuer-1","sub":"ab"}')
    head, payload, sig = token.split(".")
    assert len(sig) % 4 in (2, 3) and len(payload) % 4 in (2, 3)
    assert verified(f"{head}.{payload}.{_set_trailing_bits(sig)}") is Status.OK
    respelled = f"{head}.{_set_trailing_bits(payload)}.{sig}"
    assert parse_token(respelled).jwt.payload == parse_token(token).jwt.payload
    assert verified(respelled) is Status.JWT_VERIFICATION_FAIL
