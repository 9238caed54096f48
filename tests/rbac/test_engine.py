from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pytest

from authz.policy.authorization import AuthorizationPolicy, parse_authorization_policy
from authz.policy.errors import PolicyErrors
from authz.policy.load import parse_text
from authz.rbac.context import AuthzContext, RequestAuth
from authz.rbac.engine import (
    ALLOWED,
    DENIED_BY_DENY_POLICY,
    NO_ALLOW_POLICY_MATCHED,
    NO_POLICY,
    AuthzResult,
    PolicySet,
)
from authz.request.scope import Scope
from authz.request.view import Peer, RequestView, split_path

ROOT = "istio-system"
PEER = "spiffe://cluster.local/ns/client/sa/caller"


def ctx(
    *,
    method: str = "GET",
    host: str = "example.com",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    source_ip: str = "10.1.0.1",
    principal: str = "",
    remote_ip: str | None = None,
    dest_ip: str = "10.2.0.2",
    dest_port: int | None = 8080,
    sni: str = "",
    namespace: str = "foo",
    labels: Mapping[str, str] | None = None,
    claims: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Mapping[str, str]] | None = None,
) -> AuthzContext:
    raw_path, query = split_path(path)
    view = RequestView(
        method=method,
        host=host,
        path=raw_path,
        query=query,
        headers=MappingProxyType({k.lower(): v for k, v in (headers or {}).items()}),
        source=Peer(ip=source_ip, port=40000, principal=principal),
        destination=Peer(ip=dest_ip, port=dest_port),
        context_extensions=MappingProxyType({}),
        scope=Scope(namespace, MappingProxyType(dict(labels or {}))),
        sni=sni,
        metadata=MappingProxyType(dict(metadata or {})),
    )
    auth = RequestAuth(MappingProxyType(dict(claims))) if claims is not None else None
    return AuthzContext(view, auth, remote_ip if remote_ip is not None else source_ip)


def policies(text: str) -> list[AuthorizationPolicy]:
    return [parse_authorization_policy(r) for r in parse_text(text, "test.yaml", "foo")]


def compile_set(text: str, aliases: Sequence[str] = ()) -> PolicySet:
    return PolicySet.compile(policies(text), ROOT, aliases)


def policy(spec: str, *, name: str = "p", namespace: str = "foo",
           annotations: str = "") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    meta = f"  annotations: {annotations}\n" if annotations else ""
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata:\n  name: {name}\n  namespace: {namespace}\n{meta}spec:\n{body}\n---\n")


REQUIRE_JWT = """
action: DENY
rules:
- from:
  - source:
      notRequestPrincipals: ["*"]
"""
"""The headline pattern: deny any request without a request principal."""


def check(ps: PolicySet, c: AuthzContext) -> AuthzResult:
    return ps.evaluate(c)


# --- decision table (B.2) ----------------------------------------------------------


def test_no_policy_allows() -> None:
    result = compile_set("").evaluate(ctx())
    assert result == AuthzResult(True, None, NO_POLICY, (), ())


def test_require_jwt_pattern_denies_without_token() -> None:
    ps = compile_set(policy(REQUIRE_JWT))
    denied = ps.evaluate(ctx())
    assert not denied.allowed
    assert denied.reason == DENIED_BY_DENY_POLICY
    assert denied.policy == "ns[foo]-policy[p]-rule[0]"
    ok = ps.evaluate(ctx(claims={"iss": "https://issuer", "sub": "user"}))
    assert ok.allowed and ok.reason == ALLOWED and ok.policy is None
    # A token without "sub" has no principal: still denied.
    assert not ps.evaluate(ctx(claims={"iss": "https://issuer"})).allowed


def test_allow_policy_must_match() -> None:
    ps = compile_set(policy("""
rules:
- to:
  - operation:
      methods: ["GET"]
      paths: ["/public/*"]
"""))
    ok = ps.evaluate(ctx(path="/public/x?debug=1"))  # the query is not part of the path
    assert ok.allowed and ok.policy == "ns[foo]-policy[p]-rule[0]" and ok.reason == ALLOWED
    no = ps.evaluate(ctx(method="POST", path="/public/x"))
    assert not no.allowed and no.reason == NO_ALLOW_POLICY_MATCHED and no.policy is None


def test_deny_wins_over_allow() -> None:
    ps = compile_set(policy("""
action: DENY
rules:
- to:
  - operation:
      paths: ["/admin*"]
""", name="deny") + policy("""
rules:
- {}
""", name="allow"))
    assert not ps.evaluate(ctx(path="/admin/x")).allowed
    assert ps.evaluate(ctx(path="/other")).policy == "ns[foo]-policy[allow]-rule[0]"


def test_empty_spec_denies_all_but_empty_rule_allows_all() -> None:
    deny_all = compile_set(policy("{}", name="none"))
    result = deny_all.evaluate(ctx())
    assert not result.allowed and result.reason == NO_ALLOW_POLICY_MATCHED
    allow_all = compile_set(policy("{}", name="none") + policy("rules: [{}]", name="all"))
    assert allow_all.evaluate(ctx()).allowed


def test_deny_empty_rule_denies_all() -> None:
    ps = compile_set(policy("action: DENY\nrules: [{}]"))
    assert not ps.evaluate(ctx()).allowed


def test_only_deny_policies_none_match_allows() -> None:
    ps = compile_set(policy("""
action: DENY
rules:
- to:
  - operation:
      methods: ["DELETE"]
"""))
    result = ps.evaluate(ctx())
    assert result.allowed and result.reason == ALLOWED and result.policy is None


# --- rule structure (B.2, B.5) -------------------------------------------------------


def test_rule_ands_sides_and_ors_entries() -> None:
    ps = compile_set(policy("""
rules:
- from:
  - source:
      namespaces: ["client"]
  - source:
      ipBlocks: ["192.168.0.0/16"]
  to:
  - operation:
      methods: ["GET"]
  - operation:
      ports: ["9090"]
  when:
  - key: request.headers[X-Env]
    values: ["prod"]
"""))
    good = {"headers": {"X-Env": "prod"}}
    assert ps.evaluate(ctx(principal=PEER, **good)).allowed
    assert ps.evaluate(ctx(source_ip="192.168.3.3", method="PUT", dest_port=9090, **good)).allowed
    assert not ps.evaluate(ctx(principal=PEER)).allowed  # when fails
    assert not ps.evaluate(ctx(principal=PEER, method="PUT", **good)).allowed  # to fails
    assert not ps.evaluate(ctx(**good)).allowed  # from fails (no mTLS, wrong IP)


def test_fields_in_one_source_are_anded_and_values_ored() -> None:
    ps = compile_set(policy("""
rules:
- to:
  - operation:
      methods: ["GET", "HEAD"]
      paths: ["/a"]
"""))
    assert ps.evaluate(ctx(method="HEAD", path="/a")).allowed
    assert not ps.evaluate(ctx(method="HEAD", path="/b")).allowed


def test_values_and_not_values_both_hold() -> None:
    ps = compile_set(policy("""
rules:
- when:
  - key: request.headers[x-user]
    values: ["team-*"]
    notValues: ["team-guest"]
"""))
    assert ps.evaluate(ctx(headers={"x-user": "team-a"})).allowed
    assert not ps.evaluate(ctx(headers={"x-user": "team-guest"})).allowed
    assert not ps.evaluate(ctx()).allowed  # missing header fails the positive list


@pytest.mark.parametrize(
    "field",
    ["notPrincipals", "notNamespaces", "notRequestPrincipals", "notServiceAccounts",
     "notTrustDomains"],
)
def test_not_fields_hold_when_attribute_missing(field: str) -> None:
    value = "client/caller" if field == "notServiceAccounts" else "*"
    ps = compile_set(policy(f"""
rules:
- from:
  - source:
      {field}: ["{value}"]
"""))
    assert ps.evaluate(ctx()).allowed  # no mTLS peer / no token: the not* holds


def test_not_operation_fields_and_missing_header() -> None:
    ps = compile_set(policy("""
action: DENY
rules:
- to:
  - operation:
      notMethods: ["GET"]
- when:
  - key: request.headers[x-api-key]
    notValues: ["*"]
"""))
    assert not ps.evaluate(ctx(method="GET")).allowed  # rule 1: header missing
    assert ps.evaluate(ctx(method="GET", headers={"X-Api-Key": ""})).allowed  # present, empty
    result = ps.evaluate(ctx(method="POST", headers={"x-api-key": "k"}))
    assert result.policy == "ns[foo]-policy[p]-rule[0]"


def test_positive_source_fields_need_mtls() -> None:
    ps = compile_set(policy("""
rules:
- from:
  - source:
      principals: ["*"]
"""))
    assert not ps.evaluate(ctx()).allowed
    assert ps.evaluate(ctx(principal=PEER)).allowed


# --- every attribute --------------------------------------------------------------------


def test_source_fields() -> None:
    ps = compile_set(policy("""
rules:
- from:
  - source:
      principals: ["cluster.local/ns/client/sa/caller"]
- from:
  - source:
      serviceAccounts: ["client/caller"]
- from:
  - source:
      trustDomains: ["other.td"]
- from:
  - source:
      remoteIpBlocks: ["203.0.113.0/24"]
- from:
  - source:
      requestPrincipals: ["https://accounts.example.com/*"]
"""))
    assert ps.evaluate(ctx(principal=PEER)).policy == "ns[foo]-policy[p]-rule[0]"
    assert ps.evaluate(ctx(principal="spiffe://other.td/ns/x/sa/y")).policy.endswith("rule[2]")
    assert ps.evaluate(ctx(source_ip="10.0.0.1", remote_ip="203.0.113.9")).allowed
    assert not ps.evaluate(ctx(source_ip="203.0.113.9", remote_ip="10.0.0.1")).allowed
    jwt = {"iss": "https://accounts.example.com", "sub": "u1"}
    assert ps.evaluate(ctx(claims=jwt)).policy.endswith("rule[4]")


def test_service_account_defaults_to_policy_namespace() -> None:
    ps = compile_set(policy("""
rules:
- from:
  - source:
      serviceAccounts: ["caller"]
"""))
    assert ps.evaluate(ctx(principal="spiffe://cluster.local/ns/foo/sa/caller")).allowed
    assert not ps.evaluate(ctx(principal=PEER)).allowed


def test_hosts_ports_and_when_attributes() -> None:
    ps = compile_set(policy("""
rules:
- to:
  - operation:
      hosts: ["api.example.com"]
- when:
  - key: source.ip
    values: ["10.9.0.0/16"]
- when:
  - key: remote.ip
    values: ["198.51.100.7"]
- when:
  - key: destination.ip
    values: ["10.2.0.0/24"]
  - key: destination.port
    values: ["9443"]
- when:
  - key: connection.sni
    values: ["*.internal"]
- when:
  - key: source.namespace
    values: ["client"]
  - key: source.principal
    values: ["cluster.local/ns/client/*"]
  - key: source.serviceAccount
    values: ["client/caller"]
  - key: source.trustDomain
    values: ["cluster.local"]
"""))
    name = "ns[foo]-policy[p]-rule[{}]"
    assert ps.evaluate(ctx(host="API.example.com")).policy == name.format(0)
    assert not ps.evaluate(ctx(host="api.example.com:8080")).allowed
    assert ps.evaluate(ctx(source_ip="10.9.1.1")).policy == name.format(1)
    assert ps.evaluate(ctx(remote_ip="198.51.100.7")).policy == name.format(2)
    assert ps.evaluate(ctx(dest_port=9443)).policy == name.format(3)
    assert not ps.evaluate(ctx(dest_port=9443, dest_ip="10.3.0.1")).allowed
    assert ps.evaluate(ctx(sni="db.internal")).policy == name.format(4)
    assert ps.evaluate(ctx(principal=PEER)).policy == name.format(5)
    assert not ps.evaluate(ctx(dest_port=None)).allowed


def test_jwt_conditions() -> None:
    ps = compile_set(policy("""
rules:
- when:
  - key: request.auth.principal
    values: ["iss1/*"]
  - key: request.auth.audiences
    values: ["api"]
  - key: request.auth.presenter
    values: ["web-*"]
  - key: request.auth.claims[groups]
    values: ["admin"]
  - key: request.auth.claims[realm][role]
    values: ["owner"]
  - key: request.auth.claims[scope]
    values: ["read"]
"""))
    claims: dict[str, Any] = {
        "iss": "iss1", "sub": "alice", "aud": ["other", "api"], "azp": "web-app",
        "groups": ["dev", "admin"], "realm": {"role": "owner"}, "scope": ["write", "read"],
    }
    assert ps.evaluate(ctx(claims=claims)).allowed
    assert not ps.evaluate(ctx(claims={**claims, "aud": "nope"})).allowed
    assert not ps.evaluate(ctx(claims={**claims, "realm": {"role": 1}})).allowed
    assert not ps.evaluate(ctx(claims={**claims, "scope": "write read"})).allowed
    assert not ps.evaluate(ctx()).allowed


def test_envoy_metadata_condition_reads_metadata_context() -> None:
    """``experimental.envoy.filters.a.b[c]``: filter ``envoy.filters.a.b``, key ``c``,
    compared as a string (Istio's ``MetadataStringMatcher``)."""
    ps = compile_set(policy("""
rules:
- when:
  - key: experimental.envoy.filters.http.jwt_authn[user]
    values: ["alice", "bob*"]
  - key: experimental.envoy.filters.http.jwt_authn[tier]
    notValues: ["free"]
"""))
    def meta(**values: str) -> dict[str, dict[str, str]]:
        return {"envoy.filters.http.jwt_authn": values}
    assert ps.evaluate(ctx(metadata=meta(user="alice"))).allowed
    assert ps.evaluate(ctx(metadata=meta(user="bobby", tier="gold"))).allowed
    assert not ps.evaluate(ctx(metadata=meta(user="bobby", tier="free"))).allowed
    assert not ps.evaluate(ctx(metadata=meta(user="carol"))).allowed
    assert not ps.evaluate(ctx(metadata={"envoy.filters.http.other": {"user": "alice"}})).allowed


def test_envoy_metadata_condition_without_metadata_is_absent() -> None:
    ps = compile_set(policy("""
rules:
- when:
  - key: experimental.envoy.filters.a.b[c]
    values: ["*"]
- when:
  - key: experimental.envoy.filters.a.b[c]
    notValues: ["x"]
  - key: request.headers[x-probe]
    values: ["1"]
"""))
    assert not ps.evaluate(ctx()).allowed
    assert ps.evaluate(ctx(headers={"x-probe": "1"})).policy == "ns[foo]-policy[p]-rule[1]"


def test_path_templates_in_policy() -> None:
    ps = compile_set(policy("""
rules:
- to:
  - operation:
      paths: ["/api/{*}/items/{**}"]
"""))
    assert ps.evaluate(ctx(path="/api/v1/items/a/b?x=y")).allowed
    assert not ps.evaluate(ctx(path="/api/v1/v2/items/a")).allowed


def test_trust_domain_aliases_setting() -> None:
    text = policy("""
rules:
- from:
  - source:
      principals: ["cluster.local/ns/client/sa/caller"]
""")
    old = "spiffe://old-td/ns/client/sa/caller"
    assert not compile_set(text).evaluate(ctx(principal=old)).allowed
    with_aliases = compile_set(text, ("new-td", "old-td"))
    assert with_aliases.evaluate(ctx(principal=old)).allowed
    assert with_aliases.evaluate(ctx(principal="spiffe://new-td/ns/client/sa/caller")).allowed


# --- dry run and audit (B.10) -------------------------------------------------------------


def test_dry_run_deny_is_reported_not_enforced() -> None:
    ps = compile_set(policy("""
action: DENY
rules:
- to:
  - operation:
      paths: ["/deny"]
""", name="bar", annotations='{"istio.io/dry-run": "true"}'))
    result = ps.evaluate(ctx(path="/deny"))
    assert result.allowed and result.reason == NO_POLICY
    assert result.dry_run == ("deny ns[foo]-policy[bar]-rule[0]",)
    assert ps.evaluate(ctx(path="/other")).dry_run == ()


def test_dry_run_allow_does_not_count_as_allow_policy() -> None:
    ps = compile_set(policy("""
rules:
- to:
  - operation:
      paths: ["/allow"]
""", name="dry", annotations='{"istio.io/dry-run": "1"}'))
    other = ps.evaluate(ctx(path="/other"))
    assert other.allowed and other.reason == NO_POLICY
    assert other.dry_run == ("deny no_allow_policy_matched",)
    assert ps.evaluate(ctx(path="/allow")).dry_run == ("allow ns[foo]-policy[dry]-rule[0]",)


def test_dry_run_false_is_enforced() -> None:
    ps = compile_set(policy("rules:\n- to:\n  - operation:\n      paths: [\"/a\"]",
                            annotations='{"istio.io/dry-run": "False"}'))
    assert not ps.evaluate(ctx(path="/b")).allowed


def test_audit_only_marks() -> None:
    ps = compile_set(policy("action: AUDIT\nrules: [{}]", name="audit-all") + policy("""
action: AUDIT
rules:
- to:
  - operation:
      paths: ["/x"]
""", name="audit-x"))
    result = ps.evaluate(ctx(path="/y"))
    assert result.allowed and result.reason == NO_POLICY
    assert result.audit == ("ns[foo]-policy[audit-all]-rule[0]",)
    assert ps.evaluate(ctx(path="/x")).audit == (
        "ns[foo]-policy[audit-all]-rule[0]", "ns[foo]-policy[audit-x]-rule[0]")


# --- scope (B.1) ----------------------------------------------------------------------------


def test_selector_is_a_subset_match() -> None:
    ps = compile_set(policy("""
selector:
  matchLabels:
    app: web
    version: v1
rules:
- to:
  - operation:
      paths: ["/ok"]
"""))
    assert not ps.evaluate(ctx(labels={"app": "web", "version": "v1", "extra": "x"})).allowed
    assert ps.evaluate(ctx(labels={"app": "web", "version": "v1"}, path="/ok")).allowed
    # Workloads the selector does not pick have no policy at all.
    assert ps.evaluate(ctx(labels={"app": "web"})).reason == NO_POLICY
    assert ps.evaluate(ctx(labels={"app": "web", "version": "v2"})).reason == NO_POLICY


def test_root_namespace_applies_everywhere_with_selector() -> None:
    ps = compile_set(policy("action: DENY\nrules: [{}]", name="lockdown", namespace=ROOT)
                     + policy("""
action: DENY
selector:
  matchLabels:
    app: db
rules: [{}]
""", name="db", namespace=ROOT))
    result = ps.evaluate(ctx(namespace="anything"))
    assert not result.allowed and result.policy == "ns[istio-system]-policy[lockdown]-rule[0]"
    assert not ps.evaluate(ctx(namespace=ROOT)).allowed


def test_root_selector_applies_in_every_namespace() -> None:
    ps = compile_set(policy("""
action: DENY
selector:
  matchLabels:
    app: db
rules: [{}]
""", name="db", namespace=ROOT))
    assert not ps.evaluate(ctx(namespace="bar", labels={"app": "db"})).allowed
    assert ps.evaluate(ctx(namespace="bar", labels={"app": "web"})).allowed


def test_namespaces_are_isolated() -> None:
    ps = compile_set(policy("action: DENY\nrules: [{}]", name="deny", namespace="bar"))
    assert ps.evaluate(ctx(namespace="foo")).reason == NO_POLICY
    assert not ps.evaluate(ctx(namespace="bar")).allowed


def test_root_and_namespace_allow_policies_combine() -> None:
    ps = compile_set(
        policy("rules:\n- to:\n  - operation:\n      paths: [\"/health\"]", name="h",
               namespace=ROOT)
        + policy("rules:\n- to:\n  - operation:\n      paths: [\"/app\"]", name="app"))
    assert ps.evaluate(ctx(path="/health")).policy == "ns[istio-system]-policy[h]-rule[0]"
    assert ps.evaluate(ctx(path="/app")).policy == "ns[foo]-policy[app]-rule[0]"
    assert not ps.evaluate(ctx(path="/other")).allowed
    assert ps.evaluate(ctx(path="/health", namespace="bar")).allowed
    assert not ps.evaluate(ctx(path="/app", namespace="bar")).allowed


def test_deciding_rule_is_envoys_first_by_name() -> None:
    rules = "\n".join(["rules:"] + ["- to:\n  - operation:\n      methods: [\"GET\"]"] * 11)
    ps = compile_set(policy(rules, name="b") + policy("rules: [{}]", name="a-x"))
    # Envoy keeps policies in a name-ordered map: "ns[foo]-policy[a-x]" sorts first.
    assert ps.evaluate(ctx()).policy == "ns[foo]-policy[a-x]-rule[0]"
    only_b = compile_set(policy(rules, name="b"))
    assert only_b.evaluate(ctx()).policy == "ns[foo]-policy[b]-rule[0]"
    last_match = compile_set(policy(
        "\n".join(["rules:"] + ["- to:\n  - operation:\n      methods: [\"PUT\"]"] * 10
                  + ["- to:\n  - operation:\n      methods: [\"GET\"]"] * 2), name="c"))
    # rule[10] and rule[11] match; "rule[10]" < "rule[11]".
    assert last_match.evaluate(ctx()).policy == "ns[foo]-policy[c]-rule[10]"


def test_custom_and_target_ref_policies_are_kept_but_not_evaluated() -> None:
    ps = compile_set(policy("""
action: CUSTOM
provider:
  name: my-ext-authz
rules:
- to:
  - operation:
      paths: ["/admin"]
""", name="custom") + policy("""
targetRefs:
- kind: Gateway
  group: gateway.networking.k8s.io
  name: gw
action: DENY
rules: [{}]
""", name="gw"))
    assert [p.name for p in ps.custom] == ["custom"]
    assert [p.name for p in ps.not_attached] == ["gw"]
    assert ps.evaluate(ctx(path="/admin")).reason == NO_POLICY
    assert ps.applicable(Scope("foo")) == ()


def test_duplicate_policy_names_are_rejected() -> None:
    text = policy("rules: [{}]") + policy("action: DENY\nrules: [{}]")
    with pytest.raises(PolicyErrors, match="duplicate AuthorizationPolicy foo/p"):
        compile_set(text)


def test_applicable_lists_policies_for_a_scope() -> None:
    ps = compile_set(policy("{}", name="empty") + policy("action: DENY\nrules: [{}]",
                                                           name="d", namespace="bar"))
    assert [p.name for p in ps.applicable(Scope("foo"))] == ["empty"]


def test_cost_ignores_other_namespaces() -> None:
    """Policies of unrelated namespaces are never looked at."""
    many = "".join(policy("action: DENY\nrules: [{}]", name=f"d{i}", namespace=f"ns{i}")
                   for i in range(200))
    ps = compile_set(many)
    assert ps._scope_buckets("foo")[1].deny == ()
    assert ps.evaluate(ctx()).reason == NO_POLICY


def test_target_refs_attach_to_the_named_gateway_scope_only() -> None:
    ps = compile_set(policy("""
targetRefs:
- kind: Gateway
  group: gateway.networking.k8s.io
  name: gw
action: DENY
rules: [{}]
""", name="gw"))
    label = "gateway.networking.k8s.io/gateway-name"
    gateway = ctx(labels={label: "gw"})
    assert not ps.evaluate(gateway).allowed
    assert ps.evaluate(gateway).policy == "ns[foo]-policy[gw]-rule[0]"
    assert ps.evaluate(ctx(labels={label: "other"})).allowed
    assert ps.evaluate(ctx(namespace="bar", labels={label: "gw"})).allowed
    assert ps.evaluate(ctx(labels={"app": "gw"})).allowed


def test_header_names_are_every_header_a_rule_in_scope_reads() -> None:
    pset = compile_set(policy("""\
  action: DENY
  rules:
  - when:
    - key: request.headers[X-Deny]
      notValues: ["ok"]
""", name="a") + "---\n" + policy("""\
  rules:
  - to:
    - operation: {paths: ["/x"]}
    when:
    - key: request.headers[x-allow]
      values: ["1"]
    - key: request.auth.claims[group]
      values: ["g"]
""", name="b") + "---\n" + policy("""\
  rules:
  - when:
    - key: request.headers[x-elsewhere]
      values: ["1"]
""", name="c", namespace="bar"))
    assert pset.header_names(Scope("foo")) == {"x-deny", "x-allow"}
    assert pset.header_names(Scope("bar")) == {"x-elsewhere"}
    assert pset.header_names(Scope("baz")) == frozenset()
