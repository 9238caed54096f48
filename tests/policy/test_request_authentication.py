from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from authz.authn.selection import RequestAuthnPolicies, select_rules
from authz.policy.errors import PolicyErrors
from authz.policy.load import parse_text
from authz.policy.request_authentication import (
    ALWAYS_SPACE_DELIMITED,
    ClaimToHeader,
    HeaderLocation,
    Presence,
    RequestAuthentication,
    parse_duration,
    parse_request_authentication,
)
from authz.request.scope import Scope
from tests.shared_data import require_shared

VALIDATION = "conformance/istio-authn/validation"
REQUESTAUTHN = "conformance/istio-authn/integration-requestauthn"


def parse(spec: str, *, ns: str = "foo", name: str = "ra",
          api: str = "security.istio.io/v1") -> RequestAuthentication:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    text = (f"apiVersion: {api}\nkind: RequestAuthentication\n"
            f"metadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{body}\n")
    (res,) = parse_text(text, "ra.yaml")
    return parse_request_authentication(res)


def errors(spec: str) -> list[str]:
    with pytest.raises(PolicyErrors) as info:
        parse(spec)
    return [str(e) for e in info.value.errors]


def test_every_field() -> None:
    ra = parse("""
selector: {matchLabels: {app: httpbin}}
jwtRules:
- issuer: example.com
  audiences: [a, b]
  jwksUri: https://example.com/.well-known/jwks.json
  fromHeaders: [{name: X-Token, prefix: "Bearer "}, {name: other}]
  fromParams: [token]
  fromCookies: [session]
  outputPayloadToHeader: X-Payload
  outputClaimToHeaders: [{header: X-Sub, claim: sub}]
  forwardOriginalToken: true
  timeout: 1m30s
  spaceDelimitedClaims: [custom, scope]
  presence: REQUIRED
""", api="security.istio.io/v1beta1")
    (rule,) = ra.rules
    assert ra.selector == {"app": "httpbin"}
    assert rule.audiences == ("a", "b")
    assert rule.from_headers == (HeaderLocation("x-token", "Bearer "), HeaderLocation("other"))
    assert rule.from_params == ("token",) and rule.from_cookies == ("session",)
    assert rule.output_payload_to_header == "x-payload"
    assert rule.output_claim_to_headers == (ClaimToHeader("x-sub", "sub"),)
    assert rule.forward_original_token and rule.timeout == 90.0
    assert rule.space_delimited_claims == ("custom", "permission", "scope")
    assert rule.presence is Presence.REQUIRED
    assert rule.source == "RequestAuthentication foo/ra jwtRules[0]"
    assert rule.output_headers == ("x-sub", "x-payload")


def test_defaults() -> None:
    (rule,) = parse("jwtRules: [{issuer: x}]").rules
    assert rule.uses_discovery and rule.timeout == 5.0
    assert rule.space_delimited_claims == ALWAYS_SPACE_DELIMITED
    assert rule.header_locations == (HeaderLocation("authorization", "Bearer "),)
    assert rule.param_locations == ("access_token",)
    assert not rule.forward_original_token and rule.presence is Presence.OPTIONAL


def test_jwks_uri_alias_and_inline_jwks() -> None:
    (rule,) = parse("jwtRules: [{issuer: x, jwks_uri: 'http://h/k'}]").rules
    assert rule.jwks_uri == "http://h/k"
    (rule,) = parse("""jwtRules: [{issuer: x, jwks: '{"keys": []}'}]""").rules
    assert rule.jwks == '{"keys": []}' and not rule.uses_discovery


@pytest.mark.parametrize(("spec", "message"), [
    ("jwtRules: [{issuer: ''}]", "issuer must be set"),
    ("jwtRules: [{issuer: x, jwksUri: 'ftp://h'}]", "url must have scheme"),
    ("jwtRules: [{issuer: x, jwksUri: 'http://h', jwks: '{}'}]", "only one of jwks or jwksUri"),
    ("jwtRules: [{issuer: x, jwks: 'nope'}]", "jwks parse error"),
    ("jwtRules: [{issuer: x, timeout: 0s}]", "must be a valid duration greater than 1ms"),
    ("jwtRules: [{issuer: x, bogus: 1}]", "unknown field 'bogus'"),
    ("jwtRules: [{issuer: x, forwardOriginalToken: 'yes'}]", "must be a boolean"),
    ("jwtRules: [{issuer: x, fromHeaders: [{name: 'bad header'}]}]", "invalid HTTP header name"),
    ("{selector: {matchLabels: {a: '*'}}, jwtRules: []}", "wildcard not allowed"),
    ("{targetRef: {kind: Service, name: s}, selector: {}}", "only one of targetRefs or selector"),
])
def test_invalid(spec: str, message: str) -> None:
    found = errors(spec)
    assert any(message in e for e in found), found
    assert all(e.startswith("ra.yaml:") for e in found)


def test_errors_name_file_line_and_field() -> None:
    (err,) = errors("jwtRules:\n- issuer: x\n  audiences: ['']")
    assert err.startswith("ra.yaml:9: RequestAuthentication foo/ra: spec.jwtRules[0].audiences[0]")


def test_duration() -> None:
    assert parse_duration("10ms") == pytest.approx(0.01)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("apple") is None and parse_duration("5") is None


def _conformance(path: Path) -> list[tuple[str | None, str]]:
    text = path.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    resources = parse_text(text, str(path))
    assert len(docs) == len(resources)
    out = []
    for doc, res in zip(docs, resources, strict=True):
        try:
            parse_request_authentication(res)
            out.append((doc.get("_err"), ""))
        except PolicyErrors as exc:
            out.append((doc.get("_err"), str(exc)))
    return out


def test_istio_validation_dataset() -> None:
    validation = require_shared(VALIDATION)
    for name in ("reqauth-invalid.yaml", "reqauth-valid.yaml",
                 "security-v1-RequestAuthentication.yaml"):
        for expected, got in _conformance(validation / name):
            if expected is None:
                assert got == "", got
            else:
                assert got, f"accepted but Istio rejects: {expected}"
                assert str(expected).strip("'") in got, (expected, got)


def test_istio_integration_templates_parse() -> None:
    parsed = 0
    for path in sorted(require_shared(REQUESTAUTHN).glob("*.yaml.tmpl")):
        text = (path.read_text().replace("{{ .To.ServiceName }}", "b")
                .replace("{{ .JWTServer.JwksURI }}", "http://jwt.example/jwks")
                .replace("{{ .JWTServer.JwksURI }}?delay=500ms", "http://jwt.example/jwks"))
        if "{{" in text:
            continue
        RequestAuthnPolicies.from_resources(parse_text(text, str(path), "foo"))
        parsed += 1
    assert parsed, "no template without Go template syntax left to parse"


MERGE = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh, namespace: istio-system}
spec:
  jwtRules: [{issuer: z-mesh}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh-selected, namespace: istio-system}
spec:
  selector: {matchLabels: {app: a}}
  jwtRules: [{issuer: m-mesh-a}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ns, namespace: foo}
spec:
  jwtRules: [{issuer: b-ns, audiences: [one]}, {issuer: a-ns}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: wl, namespace: foo}
spec:
  selector: {matchLabels: {app: a, v: "1"}}
  jwtRules: [{issuer: b-ns}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: gw, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]
  jwtRules: [{issuer: a-gateway}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: other, namespace: bar}
spec:
  jwtRules: [{issuer: bar}]
"""


def issuers(policies: RequestAuthnPolicies, ns: str, **labels: str) -> list[str]:
    return [r.issuer for r in policies.rules_for(Scope(ns, labels))]


def test_selection_and_merge() -> None:
    p = RequestAuthnPolicies.from_resources(parse_text(MERGE, "m.yaml"))
    assert issuers(p, "foo") == ["a-ns", "b-ns", "z-mesh"]
    assert issuers(p, "foo", app="a") == ["a-ns", "b-ns", "m-mesh-a", "z-mesh"]
    merged = p.rules_for(Scope("foo", {"app": "a", "v": "1", "x": "y"}))
    assert [r.issuer for r in merged] == ["a-ns", "b-ns", "b-ns", "m-mesh-a", "z-mesh"]
    assert [r.audiences for r in merged if r.issuer == "b-ns"] == [("one",), ()]  # stable sort
    assert issuers(p, "bar", app="a") == ["bar", "m-mesh-a", "z-mesh"]
    assert issuers(p, "empty") == ["z-mesh"]
    assert p.rules_for(Scope("foo", {})) is p.rules_for(Scope("foo", {}))  # memoized
    # targetRefs attach only to the Gateway-API gateway the scope names, in its namespace
    gateway = {"gateway.networking.k8s.io/gateway-name": "gw"}
    assert "a-gateway" in {r.issuer for r in p.all_rules}  # its JWKS must be fetched
    assert issuers(p, "foo", **{"gateway.networking.k8s.io/gateway-name": "gw"}) == [
        "a-gateway", "a-ns", "b-ns", "z-mesh"]
    assert "a-gateway" not in [r.issuer for r in p.rules_for(Scope("foo", {**gateway,
        "gateway.networking.k8s.io/gateway-name": "other"}))]
    assert "a-gateway" not in [r.issuer for r in p.rules_for(Scope("bar", gateway))]
    direct = select_rules(p.policies, Scope("foo", {"app": "a"}), "istio-system")
    assert [r.issuer for r in direct] == issuers(p, "foo", app="a")


def test_from_resources_reports_all_errors_and_ignores_other_kinds() -> None:
    text = MERGE + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: foo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad1, namespace: foo}
spec: {jwtRules: [{issuer: ''}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad2, namespace: foo}
spec: {jwtRules: [{issuer: x, timeout: nope}]}
"""
    with pytest.raises(PolicyErrors) as info:
        RequestAuthnPolicies.from_resources(parse_text(text, "m.yaml"))
    assert len(info.value.errors) == 2
