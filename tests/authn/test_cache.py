"""The caches keep what the checks after a hit need, and nothing that proves a token."""

from __future__ import annotations

from collections.abc import Mapping

from authz.authn.cache import TokenCache, outcome_memo_size, token_digest
from authz.authn.verify import parse_token
from tests.authn.helpers import NOW, claims, hmac_key

KEY = hmac_key()


def holds_signature(value: object, signature: bytes, segment: str) -> bool:
    """Whether any value reachable from ``value`` is, or contains, the signature."""
    if isinstance(value, bytes):
        return signature in value
    if isinstance(value, str):
        return segment in value
    if isinstance(value, Mapping):
        return any(holds_signature(v, signature, segment)
                   for item in value.items() for v in item)
    if isinstance(value, tuple | list):
        return any(holds_signature(v, signature, segment) for v in value)
    return False


def test_a_cached_token_keeps_its_claims_but_not_its_signature() -> None:
    token = KEY.sign(claims(aud="api"))
    signed = parse_token(token)
    assert holds_signature(signed, signed.signature, token.split(".")[2])  # the probe works
    cache = TokenCache()
    digest = token_digest(token)
    stored = cache.put(1, digest, signed.jwt, "fp", NOW)
    assert cache.get(1, digest, frozenset({"fp"}), NOW) is stored is signed.jwt  # no copy
    assert not holds_signature(stored, signed.signature, token.split(".")[2])
    assert (stored.iss, stored.exp, stored.audiences) == ("issuer-1", int(NOW) + 3600, ("api",))


def test_a_rejected_token_keeps_its_claims_but_not_its_signature() -> None:
    token = KEY.sign(claims())
    signed = parse_token(token)
    cache = TokenCache()
    digest = token_digest(token)
    cache.reject(1, digest, frozenset({"fp"}), signed.jwt)
    seen = cache.rejected(1, digest, frozenset({"fp"}))
    assert seen is not None and not holds_signature(seen, signed.signature, token.split(".")[2])
    assert cache.rejected(1, digest, frozenset({"other"})) is None  # new keys: ask again


def test_a_cache_that_keeps_nothing_hands_back_what_it_was_given() -> None:
    jwt = parse_token(KEY.sign(claims())).jwt
    assert TokenCache(max_entries=0).put(1, b"d", jwt, "fp", NOW) is jwt


def test_outcome_memos_hold_every_cached_token_and_more() -> None:
    assert outcome_memo_size(10_000) > 10_000
    assert outcome_memo_size(0) == 0
