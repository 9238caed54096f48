from __future__ import annotations

from authz.pipeline.snapshot import compile_snapshot
from authz.policy.lint import lint_authorization
from authz.policy.load import parse_text


def warnings_for(spec: str, namespace: str = "shop") -> list[str]:
    text = (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: p, namespace: {namespace}}}\nspec:\n{spec}")
    snap = compile_snapshot(parse_text(text, "p.yaml"), 1)
    return [w.message for w in lint_authorization(
        snap.authorization_policies, snap.jwt_namespaces, "istio-system")]


def test_allow_without_rules_denies_all() -> None:
    assert any("denies every request" in w for w in warnings_for("  action: ALLOW\n"))


def test_allow_with_empty_rule_is_fine() -> None:
    assert warnings_for("  rules: [{}]\n") == []


def test_deny_everything() -> None:
    (w,) = warnings_for("  action: DENY\n  rules: [{}]\n")
    assert "denies every request" in w


def test_request_principals_without_request_authentication() -> None:
    spec = "  rules:\n  - from:\n    - source: {requestPrincipals: ['*']}\n"
    assert any("no RequestAuthentication" in w for w in warnings_for(spec))


def test_contradictory_values() -> None:
    spec = "  rules:\n  - to:\n    - operation: {methods: [GET], notMethods: [GET]}\n"
    assert any("can never match" in w and "'GET'" in w for w in warnings_for(spec))
    spec = ("  rules:\n  - when:\n    - key: request.headers[x]\n      values: [a]\n"
            "      notValues: [a]\n")
    assert any("can never match" in w for w in warnings_for(spec))


def test_custom_is_explained() -> None:
    spec = "  action: CUSTOM\n  provider: {name: authz}\n  rules: [{}]\n"
    assert any("CUSTOM provider" in w for w in warnings_for(spec))
