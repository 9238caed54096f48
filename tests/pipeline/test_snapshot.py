"""Snapshot.evaluate end to end on parsed YAML: the whole pure core."""

from __future__ import annotations

import time

import pytest

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.decision import Decision, Reason
from authz.envoy.request_view import view_from_check_request
from authz.envoy.response import response_bytes
from authz.memo import CacheSizes
from authz.pipeline.snapshot import (
    PolicyOptions,
    Snapshot,
    SnapshotStore,
    compile_snapshot,
    empty_snapshot,
)
from authz.policy.errors import PolicyErrors
from authz.policy.load import parse_text
from authz.request.view import RequestView
from tests.authn.helpers import NOW, Key, claims, hmac_key, jwks

POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: shop}
spec:
  action: DENY
  rules:
  - from:
    - source: {notRequestPrincipals: ["*"]}
    to:
    - operation: {paths: ["/private/*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-get, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
  - to:
    - operation: {methods: ["GET"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin"]}
"""


def view(method: str = "GET", path: str = "/", token: str | None = None,
         **ext: str) -> RequestView:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.method = method
    req.attributes.request.http.path = path
    if token is not None:
        req.attributes.request.http.headers["authorization"] = f"Bearer {token}"
    for k, v in ext.items():
        req.attributes.context_extensions[k] = v
    return view_from_check_request(req, "default")


def with_jwt_rule(key: Key, policies: str = "", extra: str = "",
                  options: PolicyOptions | None = None) -> Snapshot:
    """``policies`` plus a RequestAuthentication in ``shop`` trusting ``key`` (issuer-1)."""
    text = (policies + "---\n" if policies else "") + f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: issuer-1
    jwks: '{jwks(key.jwk())}'
{extra}"""
    return compile_snapshot(parse_text(text, "p.yaml"), version=1, options=options)


def decide(v: RequestView, text: str = POLICIES) -> Decision:
    snap = compile_snapshot(parse_text(text, "p.yaml"), version=1)
    return snap.evaluate(v, time.time())


def test_no_policies_allow() -> None:
    decision = empty_snapshot().evaluate(view(), time.time())
    assert decision.allowed and decision.reason is Reason.NO_POLICY


def test_deny_without_token_is_rbac_403_with_envoys_body() -> None:
    d = decide(view(path="/private/x?q=1", namespace="shop"))
    assert (d.allowed, d.status, d.body, d.reason) == (
        False, 403, "RBAC: access denied", Reason.RBAC_DENIED)
    assert d.policy == "ns[shop]-policy[require-jwt]-rule[0]"


def test_root_namespace_policy_applies_everywhere() -> None:
    d = decide(view(path="/admin", namespace="elsewhere"))
    assert not d.allowed and d.policy == "ns[istio-system]-policy[block-admin]-rule[0]"


def test_selector_picks_workload_by_route_labels() -> None:
    assert not decide(view("POST", "/", namespace="shop", labels="app=orders")).allowed
    allowed = decide(view("GET", "/", namespace="shop", labels="app=orders,v=2"))
    assert allowed.allowed and allowed.reason is Reason.ALLOWED
    assert allowed.policy == "ns[shop]-policy[only-get]-rule[0]"
    # Same namespace, other workload: only the DENY policy applies, it does not match.
    other = decide(view("POST", "/", namespace="shop", labels="app=web"))
    assert other.allowed and other.reason is Reason.ALLOWED and other.policy is None


def test_other_namespace_sees_only_root_policies() -> None:
    d = decide(view("POST", "/", namespace="web"))
    assert d.allowed and d.reason is Reason.ALLOWED and d.policy is None  # root DENY applies
    shop_only = POLICIES.split("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                               "metadata: {name: block-admin")[0]
    d = decide(view("POST", "/admin", namespace="web"), shop_only)
    assert d.allowed and d.reason is Reason.NO_POLICY


def test_remote_ip_uses_xff_with_trusted_hops() -> None:
    text = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: office, namespace: default}
spec:
  rules:
  - from:
    - source: {remoteIpBlocks: ["203.0.113.0/24"]}
"""
    req = external_auth_pb2.CheckRequest()
    req.attributes.source.address.socket_address.address = "10.0.0.1"
    req.attributes.request.http.headers["x-forwarded-for"] = "203.0.113.9, 10.9.9.9"
    v = view_from_check_request(req, "default")
    res = parse_text(text, "p.yaml")
    assert not compile_snapshot(res, 1).evaluate(v, 0).allowed
    trusted = compile_snapshot(res, 1, PolicyOptions(xff_num_trusted_hops=1))
    assert trusted.evaluate(v, 0).allowed


def test_unrelated_kinds_are_ignored() -> None:
    res = parse_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "f.yaml")
    assert not any(compile_snapshot(res, version=3).kinds.values())


def test_peer_authentication_is_ignored_not_refused() -> None:
    res = parse_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\n"
        "spec: {mtls: {mode: STRICT}}\n", "f.yaml")
    assert not any(compile_snapshot(res, version=1).kinds.values())


def test_unknown_security_kind_fails_closed() -> None:
    res = parse_text(
        "apiVersion: security.istio.io/v1\nkind: Frobnicate\nmetadata: {name: x}\n", "f.yaml")
    with pytest.raises(PolicyErrors, match=r"f\.yaml:1: Frobnicate default/x"):
        compile_snapshot(res, version=1)


def test_all_errors_of_all_resources_are_reported() -> None:
    text = POLICIES + """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec:
  action: MAYBE
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-get, namespace: shop}
spec: {}
"""
    with pytest.raises(PolicyErrors) as info:
        compile_snapshot(parse_text(text, "p.yaml"), 1)
    messages = [str(e) for e in info.value.errors]
    assert any("p.yaml:34" in m and "spec.action" in m for m in messages), messages
    assert any("duplicate" in m for m in messages), messages


def test_duplicates_of_any_kind_name_both_files() -> None:
    doc = ("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
           "metadata: {name: ra, namespace: ns}\nspec: {jwtRules: [{issuer: a}]}\n")
    resources = parse_text(doc, "a.yaml") + parse_text(doc, "b.yaml")
    with pytest.raises(PolicyErrors) as info:
        compile_snapshot(resources, 1)
    (err,) = info.value.errors
    assert str(err) == ("b.yaml:1: RequestAuthentication ns/ra: duplicate "
                        "RequestAuthentication ns/ra: also defined at a.yaml:1")


def test_store_swaps_whole_snapshots() -> None:
    store = SnapshotStore()
    first = store.current
    new = compile_snapshot([], version=7)
    assert store.swap(new) is first
    assert store.current is new


def test_repeated_outcomes_share_one_decision_and_distinct_ones_do_not() -> None:
    snap = compile_snapshot(parse_text(POLICIES, "p.yaml"), version=1)
    now = time.time()
    ok = snap.evaluate(view(path="/a", namespace="shop"), now)
    assert snap.evaluate(view(path="/b", namespace="shop"), now) is ok
    denied = snap.evaluate(view(path="/private/x", namespace="shop"), now)
    assert denied is not ok and not denied.allowed and denied.allowed is not ok.allowed
    assert denied.policy == "ns[shop]-policy[require-jwt]-rule[0]"
    admin = snap.evaluate(view(path="/admin", namespace="shop"), now)
    assert admin.policy == "ns[istio-system]-policy[block-admin]-rule[0]"
    assert snap.evaluate(view(path="/private/y", namespace="shop"), now) is denied


def test_every_cached_token_keeps_its_built_decision_and_response() -> None:
    # The decision cache and the response memo are sized past the token cache: with
    # more distinct tokens than the old fixed 4,096 entries, a second pass over them
    # still gets the very same Decision and CheckResponse objects, nothing rebuilt.
    key = hmac_key()
    snap = with_jwt_rule(key, POLICIES)
    tokens = [key.sign(claims(sub=f"user-{i}")) for i in range(5_000)]
    assert len(tokens) < snap.authenticator.cache.max_entries

    def views() -> list[RequestView]:
        return [view(path="/private/x", namespace="shop", token=t) for t in tokens]

    first = [snap.evaluate(v, NOW) for v in views()]
    assert all(d.allowed and d.principal for d in first)
    responses = [response_bytes(d, snap.responses) for d in first]
    second = [snap.evaluate(v, NOW + 1) for v in views()]
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert all(response_bytes(d, snap.responses) is r
               for d, r in zip(second, responses, strict=True))


def test_a_repeated_authentication_failure_shares_one_decision() -> None:
    key = hmac_key()
    snap = with_jwt_rule(key)
    expired = key.sign(claims(exp=int(NOW) - 3600))
    first = snap.evaluate(view(path="/a", namespace="shop", token=expired), NOW)
    assert (first.status, first.body) == (401, "Jwt is expired")
    again = snap.evaluate(view(path="/a", namespace="shop", token=expired), NOW)
    assert again is first
    assert response_bytes(again, snap.responses) is response_bytes(first, snap.responses)
    # Another route is another realm in WWW-Authenticate: another decision.
    other = snap.evaluate(view(path="/b", namespace="shop", token=expired), NOW)
    assert other is not first and other.body == first.body
    assert other.response_headers != first.response_headers


def test_cache_sizes_bound_the_snapshots_caches_and_zero_turns_them_off() -> None:
    key = hmac_key()
    token = key.sign(claims())
    sizes = CacheSizes(tokens=0, decisions=0, scopes=2)
    snap = compile_snapshot(parse_text(POLICIES, "p.yaml"), version=1,
                            options=PolicyOptions(caches=sizes))
    auth = with_jwt_rule(key, POLICIES, options=PolicyOptions(caches=sizes))
    for s in (snap, auth):
        v = view(path="/private/x", namespace="shop", token=token)
        first = s.evaluate(v, NOW)
        assert s.evaluate(v, NOW) == first
        assert len(s.recent) == 0 and len(s.responses) == 0
        assert response_bytes(first, s.responses) == response_bytes(first, s.responses)
        assert len(s.responses) == 0
    assert len(auth.authenticator.cache) == 0 and auth.authenticator.cache.misses == 2
    for i in range(3):
        snap.evaluate(view(path="/a", namespace=f"ns{i}"), NOW)
    assert len(snap.inputs) <= 2


def test_each_snapshot_owns_its_peer_and_scope_parsers() -> None:
    a = compile_snapshot((), 1)
    b = compile_snapshot((), 2)
    assert a.peer("10.0.0.1", 80, "x") is a.peer("10.0.0.1", 80, "x")
    assert b.peer("10.0.0.1", 80, "x") is not a.peer("10.0.0.1", 80, "x")
    assert a.scope("shop", "app=a", "", "d") is a.scope("shop", "app=a", "", "d")
    off = compile_snapshot((), 3, options=PolicyOptions(caches=CacheSizes(scopes=0)))
    assert off.peer("10.0.0.1", 80, "x") is not off.peer("10.0.0.1", 80, "x")
