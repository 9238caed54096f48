"""The caches keep what the checks after a hit need, and nothing that proves a token."""

from __future__ import annotations

from authz.authn.cache import TokenCache, outcome_memo_size, token_digest
from authz.authn.verify import parse_jwt
from tests.authn.helpers import NOW, claims, hmac_key

KEY = hmac_key()


def test_a_cached_token_keeps_its_claims_but_not_its_signature() -> None:
    token = KEY.sign(claims(aud="api"))
    jwt = parse_jwt(token)
    cache = TokenCache()
    digest = token_digest(token)
    stored = cache.put(1, digest, jwt, "fp", NOW)
    assert cache.get(1, digest, frozenset({"fp"}), NOW) is stored
    assert (stored.signature, stored.signing_input) == (b"", b"")
    assert (stored.payload, stored.iss, stored.exp, stored.audiences, stored.payload_segment) \
        == (jwt.payload, jwt.iss, jwt.exp, jwt.audiences, jwt.payload_segment)


def test_a_rejected_token_keeps_its_claims_but_not_its_signature() -> None:
    token = KEY.sign(claims())
    cache = TokenCache()
    digest = token_digest(token)
    cache.reject(1, digest, frozenset({"fp"}), parse_jwt(token))
    seen = cache.rejected(1, digest, frozenset({"fp"}))
    assert seen is not None and (seen.signature, seen.signing_input) == (b"", b"")
    assert cache.rejected(1, digest, frozenset({"other"})) is None  # new keys: ask again


def test_a_cache_that_keeps_nothing_hands_back_what_it_was_given() -> None:
    jwt = parse_jwt(KEY.sign(claims()))
    assert TokenCache(max_entries=0).put(1, b"d", jwt, "fp", NOW) is jwt


def test_outcome_memos_hold_every_cached_token_and_more() -> None:
    assert outcome_memo_size(10_000) > 10_000
    assert outcome_memo_size(0) == 0
