from __future__ import annotations

import time

import pytest

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.decision import Reason
from authz.envoy.request_view import view_from_check_request
from authz.policy.errors import PolicyErrors
from authz.policy.load import parse_text
from authz.policy.snapshot import Snapshot, SnapshotStore, compile_snapshot


def test_no_policies_allow() -> None:
    snap = compile_snapshot([], version=1)
    view = view_from_check_request(external_auth_pb2.CheckRequest(), "default")
    decision = snap.evaluate(view, time.time())
    assert decision.allowed and decision.reason is Reason.NO_POLICY


def test_unrelated_kinds_are_ignored() -> None:
    res = parse_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "f.yaml")
    assert compile_snapshot(res, version=3).resources == ()


def test_store_swaps_whole_snapshots() -> None:
    store = SnapshotStore()
    first = store.current
    new = Snapshot(version=7, resources=())
    assert store.swap(new) is first
    assert store.current is new


def test_unenforceable_security_kind_fails_closed() -> None:
    from authz.policy import snapshot as snapshot_module

    if "Telemetry" in snapshot_module.ENFORCED_KINDS:  # pragma: no cover
        pytest.skip("kind became enforceable")
    res = parse_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\n",
        "f.yaml",
    )
    with pytest.raises(PolicyErrors, match=r"f\.yaml:1: PeerAuthentication default/x"):
        compile_snapshot(res, version=1)
