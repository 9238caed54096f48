"""The explanation walk: the first deciding field of every rule in scope, tokens and
their jwt_verify_lib status, and the engine's own decision."""

from __future__ import annotations

import json
import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from authz.explain.debug import explain_request
from authz.explain.request import RequestSpec, RequestSpecError, spec_from_json
from authz.explain.walk import ResourceLocator, explain
from authz.pipeline.snapshot import compile_snapshot
from authz.policy.load import parse_text
from authz.tools.jwks import jwk_entry, jwks_document

NOW = 1_900_000_000
ISSUER = "https://issuer.example"
KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = json.dumps(jwks_document([jwk_entry(KEY)]))

POLICIES = f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: app}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{JWKS}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admin, namespace: app}}
spec:
  rules:
  - to:
    - operation: {{paths: ["/admin*"]}}
  - from:
    - source: {{namespaces: [ops]}}
    - source: {{requestPrincipals: ["{ISSUER}/root"]}}
  - to:
    - operation: {{methods: [GET], notPaths: ["/public/secret"]}}
    when:
    - key: request.auth.claims[role]
      values: [reader]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: shadow, namespace: app, annotations: {{istio.io/dry-run: "true"}}}}
spec:
  action: DENY
  rules:
  - to:
    - operation: {{methods: [DELETE]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: elsewhere, namespace: other}}
spec:
  rules:
  - {{}}
"""
RESOURCES = parse_text(POLICIES, "policies.yaml")
SNAPSHOT = compile_snapshot(RESOURCES, 1)
LOCATE = ResourceLocator(RESOURCES)


def token(**claims: object) -> str:
    body = {"iss": ISSUER, "sub": "alice", "exp": NOW + 3600, **claims}
    return pyjwt.encode(body, KEY, algorithm="ES256", headers={"kid": jwk_entry(KEY)["kid"]})


def run(path: str, method: str = "GET", bearer: str | None = None):  # type: ignore[no-untyped-def]
    headers = (("authorization", f"Bearer {bearer}"),) if bearer else ()
    view = RequestSpec(f"http://api.local{path}", method, headers, namespace="app").view()
    return explain(SNAPSHOT, view, NOW, LOCATE)


def test_every_rule_in_scope_names_the_field_that_decided_it() -> None:
    e = run("/public", bearer=token(role="writer"))
    assert [p.ref for p in e.policies] == ["app/admin", "app/shadow"]
    admin = e.policies[0]
    assert [r.decided_by for r in admin.rules] == [
        'to[0].operation.paths: "/admin*" did not match "/public"',
        'from[0].source.namespaces: "ops" did not match (absent)',
        'when[0] request.auth.claims[role] values: "reader" did not match "writer"',
    ]
    assert [r.matched for r in admin.rules] == [False, False, False]
    assert all(r.evaluated for r in admin.rules)
    assert [str(r.location) for r in admin.rules] == [
        "policies.yaml:14", "policies.yaml:16", "policies.yaml:19"]
    assert e.decision.status == 403
    assert e.why == "ALLOW policies apply to this scope and none of their rules matched"
    assert "app/elsewhere" not in e.text()


def test_a_match_names_a_field_that_held_and_later_rules_are_marked_unreached() -> None:
    e = run("/admin/users", bearer=token())
    first, second, third = e.policies[0].rules
    assert first.matched and first.decided_by == (
        'to[0].operation.paths: "/admin*" matched "/admin/users"')
    assert not second.evaluated and not third.evaluated
    assert "[not reached by the engine]" in e.text()
    assert e.decision.allowed and e.decision.policy == "ns[app]-policy[admin]-rule[0]"


def test_a_negated_field_says_whether_it_held() -> None:
    e = run("/public/secret", bearer=token(role="reader"))
    third = e.policies[0].rules[2]
    assert third.decided_by == (
        'to[0].operation.notPaths: "/public/secret" matched "/public/secret" (so it fails)')
    fields = [f.to_json() for f in third.fields]
    assert fields[0]["held"] and fields[-1] == {
        "field": "to[0].operation.notPaths", "patterns": ["/public/secret"],
        "actual": '"/public/secret"', "matched": True, "held": False,
        "text": 'to[0].operation.notPaths: "/public/secret" matched "/public/secret" '
                "(so it fails)"}


def test_a_second_source_can_match_after_the_first_fails() -> None:
    e = run("/x", bearer=token(sub="root"))
    second = e.policies[0].rules[1]
    assert second.matched
    assert second.decided_by.startswith("from[1].source.requestPrincipals:")


def test_dry_run_rules_are_evaluated_and_shown_apart() -> None:
    e = run("/x", method="DELETE", bearer=token(sub="root"))
    shadow = e.policies[1]
    assert shadow.dry_run and shadow.rules[0].matched and shadow.rules[0].evaluated
    assert e.decision.allowed and e.decision.dry_run == ("deny ns[app]-policy[shadow]-rule[0]",)
    assert "DENY (dry-run) app/shadow" in e.text()


@pytest.mark.parametrize(("bearer", "status"), [
    (token(exp=NOW - 3600), "Jwt is expired"),
    ("abc", "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
    (token(iss="https://someone.else"), "Jwt issuer is not configured"),
    (token()[:-4] + "AAAA", "Jwt verification fails"),
    (token(), "OK"),
])
def test_each_token_gets_jwt_verify_libs_status(bearer: str, status: str) -> None:
    e = run("/admin", bearer=bearer)
    (rule,) = e.jwt_rules
    assert rule.source == "RequestAuthentication app/jwt jwtRules[0]"
    assert str(rule.location) == "policies.yaml:6"
    assert [(t.location, t.status) for t in rule.tokens] == [
        ("header authorization (prefix 'Bearer ')", status)]
    if status == "OK":
        assert e.authorized and e.authentication.endswith("https://issuer.example/alice")
    else:
        assert not e.authorized and e.policies == ()
        assert e.decision.status == 401 and e.why.startswith("authentication failed: ")
    assert bearer not in json.dumps(e.to_json())  # a token never appears in an explanation


def test_the_explanation_decides_like_the_engine() -> None:
    for path, method in [("/admin", "GET"), ("/x", "POST"), ("/public", "DELETE")]:
        for bearer in (None, token(), token(role="reader"), "abc"):
            e = run(path, method, bearer)
            headers = (("authorization", f"Bearer {bearer}"),) if bearer else ()
            view = RequestSpec(f"http://api.local{path}", method, headers,
                               namespace="app").view()
            assert e.decision == SNAPSHOT.evaluate(view, NOW)


def test_debug_request_descriptions() -> None:
    status, body = explain_request(SNAPSHOT, json.dumps({
        "url": "http://api.local/admin", "namespace": "app", "labels": {"app": "web"},
        "headers": {"authorization": f"Bearer {token()}"},
        "source": {"ip": "10.1.2.3"}}).encode(), time.time())
    assert status == 200 and json.loads(body)["scope"] == "app[app=web]"
    assert explain_request(SNAPSHOT, b"not json", 0)[0] == 400
    status, body = explain_request(SNAPSHOT, b'{"url": "http://h/", "bogus": 1}', 0)
    assert status == 400 and "unknown field(s) bogus" in json.loads(body)["error"]
    with pytest.raises(RequestSpecError, match="source ip"):
        spec_from_json({"url": "http://h/", "source": {"ip": "nope"}}).view()
