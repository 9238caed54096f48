"""Decisions of repeated requests: what keys them, what ends them, what they keep."""

from __future__ import annotations

from types import MappingProxyType

from authz.authn.engine import StaticKeys
from authz.authn.keys import KeySet, parse_jwks
from authz.decision import Decision, Reason
from authz.pipeline.decision_cache import DecisionCache, Inputs, request_key
from authz.pipeline.snapshot import Snapshot, compile_snapshot
from authz.policy.load import parse_text
from authz.policy.request_authentication import JwtRule
from authz.request.view import Peer, RequestView
from tests.authn.helpers import NOW, Key, claims, hmac_key, jwks, rsa_key, view

KEY = rsa_key()
ISSUER = "issuer-1"

DENY_WITHOUT_TOKEN_AND_BLOCKED_HEADER = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source: {notRequestPrincipals: ["*"]}
  - when:
    - key: request.headers[X-Blocked]
      values: ["yes"]
  - from:
    - source: {remoteIpBlocks: ["203.0.113.0/24"]}
"""


def snapshot(key: Key = KEY, *, remote: bool = False, extra: str = "",
             keys: StaticKeys | None = None) -> Snapshot:
    where = "jwksUri: https://idp.example/jwks" if remote else f"jwks: '{jwks(key.jwk())}'"
    text = DENY_WITHOUT_TOKEN_AND_BLOCKED_HEADER + f"""\
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    {where}
{extra}"""
    return compile_snapshot(parse_text(text, "p.yaml"), version=1, keys=keys)


def bearer(token: str, **more: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **more}


def test_a_repeated_request_gets_the_same_decision_without_deciding_again() -> None:
    snap = snapshot()
    token = KEY.sign(claims())
    first = snap.evaluate(view(headers=bearer(token, **{"x-request-id": "1"})), NOW)
    hits_before = snap.authenticator.cache.hits
    again = snap.evaluate(view(headers=bearer(token, **{"x-request-id": "2"})), NOW + 1)
    assert first.allowed and again is first
    assert (snap.recent.hits, snap.recent.misses) == (1, 1)
    # Authentication did not run: the token cache was not even asked.
    assert snap.authenticator.cache.hits == hits_before


def test_every_input_a_decision_reads_is_in_the_key() -> None:
    snap = snapshot()
    token = KEY.sign(claims())
    base = view(headers=bearer(token))
    inputs = _inputs(snap, base)
    assert {"authorization", "x-blocked", "x-forwarded-for", "origin",
            "access-control-request-method", "x-forwarded-proto"} == set(inputs.headers)
    key = request_key(base, inputs)
    changed = {
        "method": base._replace(method="POST"),
        "host": base._replace(host="other"),
        "path": base._replace(path="/other"),
        "query": base._replace(query="access_token=x"),
        "scheme": base._replace(scheme="https"),
        "sni": base._replace(sni="a.example"),
        "source ip": base._replace(source=Peer(ip="10.0.0.1")),
        "source principal": base._replace(source=Peer(principal="spiffe://x")),
        "destination": base._replace(destination=Peer(ip="10.0.0.2", port=80)),
        "token": view(headers=bearer(KEY.sign(claims(sub="other")))),
        "no token": view(),
        "empty token header": view(headers={"authorization": ""}),
        "rbac header": view(headers=bearer(token, **{"x-blocked": "yes"})),
        "xff": view(headers=bearer(token, **{"x-forwarded-for": "203.0.113.9"})),
        "scope": view(headers=bearer(token), namespace="bar"),
    }
    for what, other in changed.items():
        assert request_key(other, inputs) != key, what
    same = {
        "request id": base._replace(request_id="r-2"),
        "protocol": base._replace(protocol="HTTP/2"),
        "client port": base._replace(source=Peer(port=50123)),
        "other header": view(headers=bearer(token, **{"x-b3-traceid": "abc"})),
    }
    for what, other in same.items():
        assert request_key(other, inputs) == key, what


def _inputs(snap: Snapshot, v: RequestView) -> Inputs:
    snap.evaluate(v, NOW)
    found = snap.inputs.get(v.scope.key)
    assert found is not None
    return found


def test_a_header_named_by_a_policy_changes_the_decision_other_headers_do_not() -> None:
    snap = snapshot()
    token = KEY.sign(claims())
    assert snap.evaluate(view(headers=bearer(token, **{"x-other": "yes"})), NOW).allowed
    blocked = snap.evaluate(view(headers=bearer(token, **{"x-blocked": "yes"})), NOW)
    assert not blocked.allowed and blocked.reason is Reason.RBAC_DENIED
    from_office = snap.evaluate(
        view(headers=bearer(token, **{"x-forwarded-for": "203.0.113.9"})), NOW)
    assert not from_office.allowed


def test_an_entry_ends_when_its_token_expires() -> None:
    snap = snapshot()
    token = KEY.sign(claims(exp=int(NOW) + 100))
    v = view(headers=bearer(token))
    assert snap.evaluate(v, NOW).allowed
    skew = snap.authenticator.clock_skew
    assert snap.evaluate(v, NOW + 100 + skew).allowed  # still inside the skew
    late = snap.evaluate(v, NOW + 100 + skew + 1)
    assert (late.status, late.body) == (401, "Jwt is expired")


def test_an_entry_ends_when_its_token_becomes_valid() -> None:
    snap = snapshot()
    skew = snap.authenticator.clock_skew
    token = KEY.sign(claims(nbf=int(NOW) + 500))
    v = view(headers=bearer(token))
    early = snap.evaluate(v, NOW)
    assert (early.status, early.body) == (401, "Jwt not yet valid")
    assert snap.evaluate(v, NOW + 500 - skew - 1).status == 401
    assert snap.evaluate(v, NOW + 500 - skew).allowed


def test_an_entry_lasts_at_most_the_token_cache_ttl_and_not_before_it_was_made() -> None:
    snap = snapshot()
    token = KEY.sign(claims(exp=None))  # never expires
    v = view(headers=bearer(token))
    snap.evaluate(v, NOW)
    snap.evaluate(v, NOW + 1)
    assert snap.recent.hits == 1
    snap.evaluate(v, NOW + snap.authenticator.cache.max_ttl)  # too old: decided again
    snap.evaluate(v, NOW - 5)  # the clock stepped back: decided again
    assert (snap.recent.hits, snap.recent.misses) == (1, 3)


class RotatingKeys(StaticKeys):
    """A key provider whose set can be replaced, like the JWKS manager's."""

    def __init__(self, keys: KeySet) -> None:
        super().__init__(by_uri={"https://idp.example/jwks": keys})
        object.__setattr__(self, "by_uri", {"https://idp.example/jwks": keys})

    def rotate(self, keys: KeySet) -> None:
        object.__setattr__(self, "by_uri", {"https://idp.example/jwks": keys})

    @property
    def generation(self) -> object:
        return self.by_uri


def test_a_key_set_change_ends_every_entry() -> None:
    old, new = rsa_key("old", seed=1), rsa_key("new", seed=2)
    keys = RotatingKeys(parse_jwks(jwks(old.jwk())))
    snap = snapshot(remote=True, keys=keys)
    v = view(headers=bearer(old.sign(claims())))
    assert snap.evaluate(v, NOW).allowed
    assert snap.evaluate(v, NOW).allowed and snap.recent.hits == 1
    keys.rotate(parse_jwks(jwks(new.jwk())))  # the old key is gone
    rotated = snap.evaluate(v, NOW)
    assert (rotated.status, rotated.body) == (
        401, "Jwks doesn't have key to match kid or alg from Jwt")


def test_an_unknown_kid_asks_for_keys_on_every_request_until_they_come() -> None:
    asked: list[JwtRule] = []

    class Keys(RotatingKeys):
        def request_refetch(self, rule: JwtRule) -> None:
            asked.append(rule)

    keys = Keys(parse_jwks(jwks(rsa_key("old", seed=1).jwk())))
    snap = snapshot(remote=True, keys=keys)
    newer = rsa_key("newer", seed=3)
    v = view(headers=bearer(newer.sign(claims())))
    assert snap.evaluate(v, NOW).status == 401
    assert snap.evaluate(v, NOW).status == 401
    assert len(asked) == 2 and snap.recent.hits == 0


def test_no_usable_token_nor_any_header_value_is_kept() -> None:
    snap = snapshot(hmac_key(), extra="    fromParams: [token]\n    fromCookies: [session]\n")
    token = hmac_key().sign(claims())
    requests = [
        view(headers=bearer(token)),
        view(query=f"token={token}"),
        view(headers={"cookie": f"session={token}"}),
    ]
    for v in requests:
        snap.evaluate(v, NOW)
    snap.evaluate(view(headers={"x-blocked": "api-key-123"}), NOW)
    kept = repr((snap.recent._decisions, snap.recent._validity))
    assert len(snap.recent) == 4
    assert token not in kept and token.split(".")[2] not in kept
    assert "api-key-123" not in kept  # nor any other header value


def test_cookie_and_query_tokens_are_part_of_the_key() -> None:
    key = hmac_key()
    snap = snapshot(key, extra="    fromParams: [token]\n    fromCookies: [session]\n")
    good, bad = key.sign(claims()), key.sign(claims()) + "x"
    assert snap.evaluate(view(query=f"token={good}"), NOW).allowed
    assert snap.evaluate(view(query=f"token={bad}"), NOW).status == 401
    assert snap.evaluate(view(headers={"cookie": f"session={good}"}), NOW).allowed
    assert snap.evaluate(view(headers={"cookie": f"session={bad}"}), NOW).status == 401


def test_a_reload_starts_empty() -> None:
    token = KEY.sign(claims())
    first, second = snapshot(), snapshot()
    first.evaluate(view(headers=bearer(token)), NOW)
    assert len(first.recent) == 1 and len(second.recent) == 0


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache = DecisionCache(0, 600.0)
    decision = Decision.allow()
    cache.put(("k",), decision, NOW, NOW + 10, None)
    assert len(cache) == 0 and cache.get(("k",), NOW, None) is None


def test_inputs_are_the_union_of_the_headers_read_in_a_fixed_order() -> None:
    inputs = Inputs.of(frozenset({"authorization", "cookie"}),
                       frozenset({"cookie", "x-a", "origin"}))
    assert inputs == Inputs(("authorization", "cookie", "origin", "x-a"))


def test_views_with_headers_in_any_mapping_key_alike() -> None:
    inputs = Inputs(("authorization", "x-a"))
    a = view(headers={"authorization": "Bearer t", "x-a": "1"})
    b = a._replace(headers=MappingProxyType(dict(a.headers)))
    assert request_key(a, inputs) == request_key(b, inputs)


def test_requests_without_query_or_headers_read_share_no_digest_and_keep_apart() -> None:
    inputs = Inputs(("authorization", "cookie", "x-a"))
    bare = request_key(view(headers={"x-other": "1"}), inputs)
    assert not any(isinstance(part, bytes) for part in bare)  # nothing to hash
    others = [view(query="a=1"), view(headers={"authorization": ""}),
              view(headers={"cookie": ""}), view(headers={"authorization": "Bearer t"}),
              view(headers={"x-a": "1"}), view(headers={"x-a": "1", "cookie": "1"})]
    keys = {request_key(v, inputs) for v in others}
    assert len(keys) == len(others) and bare not in keys


def test_entries_serve_only_the_key_sets_they_were_made_with() -> None:
    cache = DecisionCache(2, 600.0)
    old_keys, new_keys = object(), object()
    decision = Decision.allow()
    cache.put(("k",), decision, NOW, NOW + 60, old_keys)
    assert cache.get(("k",), NOW + 1, old_keys) is decision
    assert cache.get(("k",), NOW + 1, new_keys) is None  # new keys: everything starts over
    assert cache.get(("k",), NOW + 1, old_keys) is None and len(cache) == 0
    # Made with keys that changed between deciding and storing: never served with others.
    cache.put(("k",), decision, NOW, NOW + 60, new_keys)
    assert cache.get(("k",), NOW + 1, old_keys) is None


def test_a_full_decision_cache_starts_over() -> None:
    cache = DecisionCache(2, 600.0)
    keys = object()
    for name in ("a", "b", "c"):
        cache.put((name,), Decision.allow(), NOW, NOW + 60, keys)
    assert len(cache) == 1 and cache.get(("c",), NOW, keys) is not None


def test_a_stored_key_shares_its_strings_with_every_other_entry() -> None:
    cache = DecisionCache(8, 600.0)
    decision = Decision.allow()
    first, second = ("".join(["GET", "/x"]),), ("".join(["GET", "/x"]),)
    assert first[0] is not second[0]
    cache.put(("a", *first), decision, NOW, NOW + 60, None)
    cache.put(("b", *second), decision, NOW, NOW + 60, None)
    (_, one), (_, two) = list(cache._decisions)
    assert one is two  # one copy kept, however many entries hold it
    assert cache.get(("a", *first), NOW + 1, None) is decision
