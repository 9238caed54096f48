"""The heap freeze is safe only because snapshots never form reference cycles."""

from __future__ import annotations

import gc

from authz import heap
from authz.envoy.response import response_bytes
from authz.pipeline.snapshot import compile_snapshot
from authz.policy.load import parse_text
from tests.authn.helpers import NOW, claims, hmac_key
from tests.pipeline.test_snapshot import POLICIES, view, with_jwt_rule


def in_collector(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_a_dropped_snapshot_leaves_no_cycle_to_collect() -> None:
    key = hmac_key()
    snap = with_jwt_rule(key, POLICIES, "    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n")
    # Fill every memo and cache a request can: tokens good and bad, allow and deny.
    for i in range(20):
        for path in ("/a", "/private/x", "/admin"):
            for token in (key.sign(claims(sub=f"u{i}")), "not.a.token", None):
                response_bytes(snap.evaluate(view(path=path, namespace="shop", token=token),
                                             NOW))
    assert len(snap.authenticator.cache) == 20
    gc.collect()
    del snap
    assert gc.collect() == 0  # freed by reference counting: nothing was left in a cycle


def test_settle_takes_what_is_alive_out_of_later_collections() -> None:
    snap = compile_snapshot(parse_text(POLICIES, "p.yaml"), version=1)
    assert in_collector(snap.authorization)
    before = gc.get_freeze_count()
    heap.settle()
    assert gc.get_freeze_count() > before
    assert not in_collector(snap.authorization)


def tracked_objects() -> int:
    for _ in range(3):  # a collection untracks tuples and dicts of atoms, inner ones first
        gc.collect()
    return len(gc.get_objects())


def test_a_cached_token_adds_few_objects_to_the_collectors_walk() -> None:
    """What a token leaves in the caches and memos (parsed claims, authn outcome,
    Decision, response, decision-cache entry) is what every full collection walks, with
    the event loop stopped: at 10,000 cached tokens, ~55 ms at 18 tracked objects per
    token, ~8 ms at 4 (docs/design/performance.md, garbage collector)."""
    key = hmac_key()
    snap = with_jwt_rule(key, POLICIES)
    tokens = [key.sign(claims(sub=f"u{i}", groups=["g1", "g2"], scope="a b"))
              for i in range(301)]

    def check(token: str) -> None:
        response_bytes(snap.evaluate(view(path="/private/x", namespace="shop", token=token),
                                     NOW))

    check(tokens[0])  # every memo and cache exists
    before = tracked_objects()
    for token in tokens[1:]:
        check(token)
    per_token = (tracked_objects() - before) / (len(tokens) - 1)
    assert len(snap.authenticator.cache) == len(tokens)
    # The parsed token, its authn outcome and its Decision (named tuples), and the
    # outcome's metadata ({"payload": claims}, a dict holding a dict): 4.
    assert per_token <= 4.1, per_token
