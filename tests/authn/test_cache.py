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
    assert cache.get(1, digest, frozenset({"fp"}), NOW) is stored  # handed out as kept
    assert not holds_signature(stored, signed.signature, token.split(".")[2])
    assert (stored.iss, stored.exp, stored.audiences) == ("issuer-1", int(NOW) + 3600, ("api",))
    assert stored.payload == signed.jwt.payload and stored.payload_segment == ""


def test_a_cached_token_shares_what_every_token_repeats() -> None:
    # Claim names, the issuer and a single audience are one object for every cached
    # token; the payload segment is kept only for outputPayloadToHeader.
    cache = TokenCache()
    a, b = (parse_token(KEY.sign(claims(aud="api", sub=s))).jwt for s in ("x", "y"))
    ka = cache.put(1, b"a", a, "fp", NOW)
    kb = cache.put(1, b"b", b, "fp", NOW, keep_segment=True)
    assert ka.iss is kb.iss is ka.payload["iss"] and ka.audiences[0] is kb.payload["aud"]
    names = {id(k) for k in ka.payload}
    assert all(id(k) in names for k in kb.payload)
    assert ka.payload_segment == "" and kb.payload_segment == b.payload_segment != ""


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


def test_the_cache_keeps_the_most_recently_used_and_nothing_beside_what_it_evicts() -> None:
    cache = TokenCache(max_entries=2)
    fps = frozenset({"fp"})
    jwts = {name: parse_token(KEY.sign(claims(sub=name))).jwt for name in "abc"}
    for name in "ab":
        cache.put(1, name.encode(), jwts[name], "fp", NOW)
    def sub(digest: bytes) -> str | None:
        found = cache.get(1, digest, fps, NOW)
        return None if found is None else found.sub

    assert sub(b"a") == "a"  # a is now the most recent
    cache.put(1, b"c", jwts["c"], "fp", NOW)
    assert sub(b"b") is None
    assert sub(b"a") == "a" and sub(b"c") == "c"
    # Each entry's (fingerprint, expiry) is kept beside it and must go with it.
    assert len(cache) == 2 and len(cache._lapse) == 2


def test_an_entry_lapses_at_expiry_at_max_ttl_and_when_its_key_leaves() -> None:
    cache = TokenCache(max_ttl=60, skew=0)
    fps = frozenset({"fp"})
    jwt = parse_token(KEY.sign(claims(exp=int(NOW) + 30))).jwt
    forever = parse_token(KEY.sign(claims(exp=None))).jwt
    cache.put(1, b"exp", jwt, "fp", NOW)
    cache.put(1, b"ttl", forever, "fp", NOW)
    cache.put(1, b"key", forever, "fp", NOW)
    assert cache.get(1, b"exp", fps, NOW + 30) is not None
    assert cache.get(1, b"exp", fps, NOW + 31) is None  # the token expired
    assert cache.get(1, b"ttl", fps, NOW + 60) is not None
    assert cache.get(1, b"ttl", fps, NOW + 61) is None  # no exp: max_ttl
    assert cache.get(1, b"key", frozenset({"other"}), NOW) is None  # its key was rotated out
    assert len(cache) == 0 and len(cache._lapse) == 0
