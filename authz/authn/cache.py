"""A bounded cache of signature-verified tokens.

The signature check is the only costly step of verification; the cache skips
it, never the other checks: the engine still runs the issuer/location, time
and audience checks on every hit. An entry is used only while

- the token has not expired (an entry also lapses after ``max_ttl`` seconds,
  so a token without ``exp`` is re-verified now and then),
- the key that verified it is still in the rule's *current* key set (a key
  removed by rotation invalidates every token it verified), and
- the cache itself lives: one cache belongs to one ``Authenticator``, i.e. one
  policy snapshot, so a reload starts empty.

Keys are a SHA-256 of the token and values keep the parsed claims, which never
include the signature (``verify.Signed`` carries it beside them), so no usable
token is kept in memory here.

Signature *failures* are remembered too, in a separate, smaller LRU: a bad
signature stays bad for the same key set, and a client (or attacker) repeating
one forged token should cost a hash lookup, not an RSA verification each time.
A rejection counts only while the rule's key set has the same keys, and the
separate bound keeps a flood of distinct forgeries from evicting good tokens.
The parsed token is kept with the rejection: the engine still runs the issuer,
time and audience checks first on every request (an expired forgery says "Jwt
is expired", as Envoy does), without decoding the token again.

Pays (instructions per ``Check``, cachegrind, ``bench/instructions.py``): a known
token on a request the decision cache has not seen costs ~300k instead of a new
token's ~910k, 67% less (workload ``paths``; w2 whenever the decision cache misses).
The rejection LRU pays the same on a repeated forgery the decision cache misses.
Sizes: ``--token-cache-size``, ``--rejected-token-cache-size``.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict

from authz.authn.verify import Jwt
from authz.memo import CacheSizes

__all__ = ["DEFAULT_MAX_ENTRIES", "TokenCache", "outcome_memo_size", "token_digest"]

DEFAULT_MAX_ENTRIES = CacheSizes().tokens
DEFAULT_MAX_TTL = 600.0
DEFAULT_MAX_REJECTED = CacheSizes().rejected_tokens


def outcome_memo_size(max_entries: int = DEFAULT_MAX_ENTRIES) -> int:
    """Entries for each memo of what a cached token yields (authn outcome, decision,
    response): every cached token plus a quarter more for other outcomes, so a full
    cache never makes a memo start over on each pass. Smaller, and a hit on a token the
    memos forgot rebuilds its metadata and response (w2: ~15% of throughput)."""
    return max_entries + max_entries // 4


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def compact(jwt: Jwt, keep_segment: bool) -> Jwt:
    """The claims as a cache keeps them: claim names, the issuer, a single audience,
    ``kid`` and ``alg`` interned (every token repeats them: fresh copies cost ~60 bytes
    each), and the payload segment dropped unless asked for (~1.3 bytes per byte of
    payload). Run once per token verified; what a token costs the cache is measured
    in docs/design/performance.md (caches)."""
    intern = sys.intern
    payload = {intern(k): v for k, v in jwt.payload.items()}
    iss = intern(jwt.iss)
    if "iss" in payload:
        payload["iss"] = iss
    audiences = jwt.audiences
    aud = payload.get("aud")
    if isinstance(aud, str):
        payload["aud"] = aud = intern(aud)
        audiences = (aud,)
    return jwt._replace(
        alg=intern(jwt.alg), kid=None if jwt.kid is None else intern(jwt.kid),
        payload=payload, payload_segment=jwt.payload_segment if keep_segment else "",
        iss=iss, audiences=audiences)


class TokenCache:
    """LRU of (rule id, token digest) -> verified ``Jwt``. No lock: only the worker's
    event-loop thread touches it (``authz.pipeline``, concurrency)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_ttl: float = DEFAULT_MAX_TTL, skew: int = 60,
                 max_rejected: int = DEFAULT_MAX_REJECTED) -> None:
        self.max_entries = max_entries
        self.max_rejected = max_rejected
        self._rejected: OrderedDict[tuple[int, bytes], tuple[frozenset[str], Jwt]] = (
            OrderedDict())
        self.max_ttl = max_ttl
        self.skew = skew
        self._entries: OrderedDict[tuple[int, bytes], Jwt] = OrderedDict()
        """(rule id, digest) -> the token's claims, least recently used first."""
        self._lapse: dict[tuple[int, bytes], tuple[str, float]] = {}
        """(rule id, digest) -> (the verifying key's fingerprint, when the entry lapses):
        beside the claims, not in a tuple with them, so that what a cached token adds
        to the cycle collector's walk is its claims' one ``Jwt`` (``authz/memo.py``)."""
        self.hits = 0
        self.misses = 0
        """Lookups since this cache was made (one cache per policy snapshot)."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, rule_id: int, digest: bytes, fingerprints: frozenset[str],
            now: float) -> Jwt | None:
        key = (rule_id, digest)
        jwt = self._entries.get(key)
        if jwt is None:
            self.misses += 1
            return None
        key_fingerprint, expires_at = self._lapse[key]
        if now > expires_at or key_fingerprint not in fingerprints:
            del self._entries[key]
            del self._lapse[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return jwt

    def put(self, rule_id: int, digest: bytes, jwt: Jwt, key_fingerprint: str,
            now: float, keep_segment: bool = False) -> Jwt:
        """Keep a verified token's claims; returns the ``Jwt`` later hits hand out (the
        same object), compacted (``compact``; without the payload segment unless
        ``keep_segment``: only ``outputPayloadToHeader`` reads it)."""
        if self.max_entries <= 0:
            return jwt
        jwt = compact(jwt, keep_segment)
        expires_at = now + self.max_ttl
        if jwt.exp:
            expires_at = min(expires_at, float(jwt.exp + self.skew))
        if expires_at < now:
            return jwt
        key = (rule_id, digest)
        self._entries[key] = jwt
        self._entries.move_to_end(key)
        self._lapse[key] = (key_fingerprint, expires_at)
        while len(self._entries) > self.max_entries:
            del self._lapse[self._entries.popitem(last=False)[0]]
        return jwt

    def rejected(self, rule_id: int, digest: bytes, fingerprints: frozenset[str]) -> Jwt | None:
        """The parsed token if its signature already failed against these same keys."""
        key = (rule_id, digest)
        seen = self._rejected.get(key)
        if seen is None:
            return None
        if seen[0] != fingerprints:
            del self._rejected[key]
            return None
        self._rejected.move_to_end(key)
        return seen[1]

    def reject(self, rule_id: int, digest: bytes, fingerprints: frozenset[str],
               jwt: Jwt) -> None:
        if self.max_rejected <= 0:
            return
        self._rejected[(rule_id, digest)] = (fingerprints, jwt)
        self._rejected.move_to_end((rule_id, digest))
        while len(self._rejected) > self.max_rejected:
            self._rejected.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
        self._lapse.clear()
        self._rejected.clear()
