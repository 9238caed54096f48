"""JWK conversion and RFC 7638 thumbprints."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from authz.tools import jwks, keys
from authz.tools.keys import ToolError

# RFC 7638 section 3.1.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc"
         "_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQ"
         "R0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bF"
         "TWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
# RFC 8037 appendices A.1-A.3: Ed25519 key and its thumbprint.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_rfc7638_example_thumbprint() -> None:
    assert jwks.thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_thumbprint_ignores_optional_members_and_order() -> None:
    reordered = {"e": RFC7638_JWK["e"], "n": RFC7638_JWK["n"], "kty": "RSA", "use": "sig"}
    assert jwks.thumbprint(reordered) == RFC7638_THUMBPRINT


def test_rfc7638_example_from_key_object() -> None:
    numbers = rsa.RSAPublicNumbers(int.from_bytes(unb64(RFC7638_JWK["e"]), "big"),
                                   int.from_bytes(unb64(RFC7638_JWK["n"]), "big"))
    key = numbers.public_key()
    assert jwks.public_jwk(key) == {"kty": "RSA", "n": RFC7638_JWK["n"], "e": "AQAB"}
    assert jwks.key_thumbprint(key) == RFC7638_THUMBPRINT


def test_rfc8037_ed25519_example() -> None:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(unb64(RFC8037_D))
    assert jwks.public_jwk(private) == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert jwks.key_thumbprint(private) == RFC8037_THUMBPRINT


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({"kty": "oct", "k": "AAAA"}, "kty 'oct' has no thumbprint"),
        ({"n": "AA"}, "kty None"),
        ({"kty": "EC", "crv": "P-256", "x": "AA"}, "lacks y"),
    ],
)
def test_thumbprint_rejects_incomplete_jwks(jwk: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolError, match=message):
        jwks.thumbprint(jwk)


@pytest.mark.parametrize(
    ("curve", "crv", "octets"),
    [(ec.SECP256R1(), "P-256", 32), (ec.SECP384R1(), "P-384", 48), (ec.SECP521R1(), "P-521", 66)],
)
def test_ec_coordinates_are_full_length(curve: ec.EllipticCurve, crv: str, octets: int) -> None:
    # Several keys, so a coordinate with leading zero octets is likely to show up.
    for _ in range(20):
        key = ec.generate_private_key(curve)
        jwk = jwks.public_jwk(key)
        assert jwk["crv"] == crv
        assert len(unb64(jwk["x"])) == octets
        assert len(unb64(jwk["y"])) == octets


def test_ec_leading_zero_coordinate_is_kept() -> None:
    # Scan small scalars for a public point whose x starts with a zero octet.
    for scalar in range(1, 2000):
        key = ec.derive_private_key(scalar, ec.SECP256R1())
        numbers = key.public_key().public_numbers()
        if numbers.x.bit_length() <= 248:
            jwk = jwks.public_jwk(key)
            assert unb64(jwk["x"])[0] == 0
            assert len(unb64(jwk["x"])) == 32
            return
    pytest.fail("no small scalar gave a short x coordinate")


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [
        (rsa.generate_private_key(65537, 2048), RSAAlgorithm),
        (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
        (ec.generate_private_key(ec.SECP521R1()), ECAlgorithm),
        (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
    ],
    ids=["rsa", "p256", "p521", "ed25519"],
)
def test_public_jwk_matches_pyjwt(key: keys.PrivateKey, algorithm: Any) -> None:
    theirs = algorithm.to_jwk(key.public_key(), as_dict=True)
    ours = jwks.public_jwk(key)
    assert ours == {k: v for k, v in theirs.items() if k in ours}
    assert set(ours) == set(jwks.THUMBPRINT_MEMBERS[ours["kty"]])


def test_uint_encoding() -> None:
    assert jwks._uint(0) == "AA"
    assert jwks._uint(65537) == "AQAB"
    assert jwks._uint(255) == "_w"
    assert jwks._uint(256) == "AQA"


def test_private_and_public_halves_share_kid() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    assert jwks.key_thumbprint(key) == jwks.key_thumbprint(key.public_key())


def test_entry_never_has_private_members() -> None:
    for key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1()),
                ed25519.Ed25519PrivateKey.generate()):
        entry = jwks.jwk_entry(key)
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(entry)
        assert entry["use"] == "sig"
        assert entry["kid"] == jwks.thumbprint(entry)


@pytest.mark.parametrize(
    ("key", "default", "allowed"),
    [
        (rsa.generate_private_key(65537, 2048), "RS256", jwks.RSA_ALGS),
        (ec.generate_private_key(ec.SECP256R1()), "ES256", ("ES256",)),
        (ec.generate_private_key(ec.SECP384R1()), "ES384", ("ES384",)),
        (ec.generate_private_key(ec.SECP521R1()), "ES512", ("ES512",)),
        (ed25519.Ed25519PrivateKey.generate(), "EdDSA", ("EdDSA",)),
    ],
    ids=["rsa", "p256", "p384", "p521", "ed25519"],
)
def test_algs(key: keys.PrivateKey, default: str, allowed: tuple[str, ...]) -> None:
    assert jwks.default_alg(key) == default
    assert jwks.allowed_algs(key) == allowed
    for alg in allowed:
        assert jwks.check_alg(key, alg) == alg
    assert jwks.jwk_entry(key)["alg"] == default


@pytest.mark.parametrize(
    ("key", "alg", "message"),
    [
        (rsa.generate_private_key(65537, 2048), "none", "alg 'none' .* never allowed"),
        (rsa.generate_private_key(65537, 2048), "NONE", "never allowed"),
        (rsa.generate_private_key(65537, 2048), "HS256", "HMAC .* RSA-2048 key"),
        (ec.generate_private_key(ec.SECP256R1()), "HS512", "HMAC .* EC P-256 key"),
        (ec.generate_private_key(ec.SECP256R1()), "RS256", "RS256 does not fit an EC P-256"),
        (ec.generate_private_key(ec.SECP384R1()), "ES256", "use ES384"),
        (ed25519.Ed25519PrivateKey.generate(), "ES256", "does not fit an Ed25519 key"),
        (rsa.generate_private_key(65537, 2048), "EdDSA", "does not fit an RSA-2048 key"),
        (rsa.generate_private_key(65537, 2048), "rs256", "does not fit"),
    ],
)
def test_alg_mismatch(key: keys.PrivateKey, alg: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        jwks.check_alg(key, alg)
    with pytest.raises(ToolError, match=message):
        jwks.jwk_entry(key, alg=alg)


def test_kid_override_and_document() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    entry = jwks.jwk_entry(key, kid="k1")
    doc = jwks.jwks_document([entry])
    assert doc == {"keys": [entry]}
    assert json.loads(jwks.dumps(doc)) == doc


def test_duplicate_kids_are_refused() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    entry = jwks.jwk_entry(key)
    with pytest.raises(ToolError, match=f"duplicate kid {entry['kid']}"):
        jwks.jwks_document([entry, entry])
