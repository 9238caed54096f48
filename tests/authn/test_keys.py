from __future__ import annotations

import base64
import datetime
import itertools
import json
import random
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from authz.authn.keys import (
    JWKS_BAD_KEYS,
    JWKS_NO_KEYS,
    JWKS_NO_VALID_KEYS,
    JWKS_PARSE_ERROR,
    b64url_decode,
    parse_jwks,
)
from tests.authn.helpers import SAMPLES_DIR, ec_key, ed_key, hmac_key, jwks, rsa_key
from tests.shared_data import require_shared


def test_every_supported_kty_parses() -> None:
    keys = parse_jwks(jwks(rsa_key().jwk(), ec_key().jwk(), ed_key().jwk(), hmac_key().jwk(),
                           ec_key("ec-384", "ES384").jwk(), ec_key("ec-521", "ES512").jwk()))
    assert keys.error is None
    assert [k.kty for k in keys.keys] == ["RSA", "EC", "OKP", "oct", "EC", "EC"]
    assert keys.kids == {"rsa-1", "ec-1", "ed-1", "hs-1", "ec-384", "ec-521"}
    assert len(keys.fingerprints) == 6


@pytest.mark.parametrize(("text", "error"), [
    ("not json", JWKS_PARSE_ERROR),
    ("[]", JWKS_PARSE_ERROR),
    ('{"foo": 1}', JWKS_NO_KEYS),
    ('{"keys": {}}', JWKS_BAD_KEYS),
    ('{"keys": []}', JWKS_NO_VALID_KEYS),
    ('{"keys": [1, "x", {"kty": "RSA"}]}', JWKS_NO_VALID_KEYS),
])
def test_invalid_sets_carry_envoy_message(text: str, error: str) -> None:
    keys = parse_jwks(text)
    assert keys.error == error
    assert not keys.usable


@pytest.mark.parametrize(("jwk", "reason"), [
    ({"kty": "RSA", "alg": "ES256"}, "[alg] is not started with [RS] or [PS] for an RSA key"),
    ({"kty": "RSA", "n": "!!", "e": "AQAB"}, "Jwks RSA [n] or [e] field is missing"),
    ({"kty": "EC", "alg": "RS256"}, "[alg] is not started with [ES] for an EC key"),
    ({"kty": "oct", "k": "a2V5", "alg": "RS256"}, "for an HMAC key"),
    ({"kty": "OKP", "crv": "X25519", "x": "AA"}, "Ed25519"),
    ({"n": "AQAB"}, "[kty] is missing in [keys]"),
    ({"kty": "XYZ"}, "not supported"),
    ({"kty": "RSA", "kid": 7}, "[kid] field is not a string"),
])
def test_unusable_keys_are_skipped_with_a_reason(jwk: dict[str, object], reason: str) -> None:
    good = rsa_key().jwk()
    keys = parse_jwks(json.dumps({"keys": [jwk, good]}))
    assert keys.usable and len(keys.keys) == 1
    assert reason in keys.skipped[0]


def test_ec_curve_must_agree_with_alg() -> None:
    p256 = ec_key().jwk()
    p256["alg"] = "ES384"
    keys = parse_jwks(jwks(p256))
    assert not keys.usable
    assert "does not match" in keys.skipped[0]


def test_ec_curve_derived_from_alg_when_crv_absent() -> None:
    jwk = ec_key().jwk()
    del jwk["crv"]
    assert parse_jwks(jwks(jwk)).usable


def test_encryption_keys_are_skipped() -> None:
    keys = parse_jwks(jwks(rsa_key().jwk(use="enc"), rsa_key("sig").jwk(use="sig")))
    assert [k.kid for k in keys.keys] == ["sig"]
    assert "[use]" in keys.skipped[0]


def test_x509_map_reads_rsa_certificates() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(private, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    keys = parse_jwks(json.dumps({"kid-a": pem}))
    assert keys.usable
    assert keys.keys[0].kid == "kid-a" and keys.keys[0].kty == "RSA"


def test_fingerprint_is_stable_and_material_sensitive() -> None:
    a = parse_jwks(jwks(rsa_key().jwk())).keys[0]
    b = parse_jwks(jwks(rsa_key().jwk())).keys[0]
    c = parse_jwks(jwks(rsa_key(seed=1).jwk())).keys[0]
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_b64url_strictness() -> None:
    assert b64url_decode("YQ") == b"a"
    assert b64url_decode("YQ==") == b"a"
    for bad in ("Y", "YQ===", "Y+Q", "Y/Q", "é"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


def reference_b64url(text: str) -> bytes:
    """RFC 4648 section 5 with optional padding, spelled out."""
    body = text.rstrip("=")
    if (len(text) - len(body) > 2 or len(body) % 4 == 1
            or re.fullmatch("[A-Za-z0-9_-]*", body) is None):
        raise ValueError(text)
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def test_b64url_agrees_with_the_rfc_on_any_text() -> None:
    """The decoder leaves most checks to binascii's strict mode (``+`` and ``/`` are
    translated to a byte it refuses): it must still accept and refuse exactly what
    base64url allows, for every length and every stray character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rng = random.Random(7)
    texts = ["".join(rng.choice(alphabet) for _ in range(n)) for n in range(0, 14)
             for _ in range(30)]
    texts += ["".join(p) for p in itertools.product("Aa_-=+/!.é ", repeat=3)]
    texts += [t[:i] + c + t[i:] for t in texts[:200] for i in (0, len(t) // 2, len(t))
              for c in "=+/ \n"]
    texts += [t + "=" * pad for t in texts[:300] for pad in (1, 2, 3)]
    for text in texts:
        try:
            expected: bytes | None = reference_b64url(text)
        except ValueError:
            expected = None
        try:
            got: bytes | None = b64url_decode(text)
        except ValueError:
            got = None
        assert got == expected, repr(text)


def test_istio_sample_jwks() -> None:
    path = require_shared(f"{SAMPLES_DIR}/jwks.json")
    keys = parse_jwks(path.read_text())
    assert keys.kids == {"DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ"}
