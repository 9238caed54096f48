"""The heap freeze is safe only because snapshots never form reference cycles."""

from __future__ import annotations

import gc

from authz import heap
from authz.envoy.response import response_bytes
from authz.policy.load import parse_text
from authz.policy.snapshot import compile_snapshot
from tests.authn.helpers import NOW, claims, hmac_key
from tests.policy.test_snapshot import POLICIES, view, with_jwt_rule


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
