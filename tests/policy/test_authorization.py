from __future__ import annotations

from pathlib import Path

import pytest

from authz.policy.authorization import (
    Action,
    Attribute,
    AuthorizationPolicy,
    Condition,
    Operation,
    Source,
    TargetRef,
    bracket_names,
    parse_authorization_policy,
    parse_bool,
    parse_condition_key,
)
from authz.policy.errors import PolicyErrors
from authz.policy.load import parse_text
from tests.shared_data import require_shared, shared_path

BUILDER = "conformance/istio-authz-builder"
CONFORMANCE = shared_path(BUILDER)


def parse(spec: str, *, annotations: str = "", api: str = "security.istio.io/v1") -> (
    AuthorizationPolicy
):
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    meta = f"  annotations: {annotations}\n" if annotations else ""
    text = (f"apiVersion: {api}\nkind: AuthorizationPolicy\n"
            f"metadata:\n  name: p\n  namespace: foo\n{meta}spec:\n{body}\n")
    (res,) = parse_text(text, "p.yaml")
    return parse_authorization_policy(res)


def errors(spec: str, **kw: str) -> list[str]:
    with pytest.raises(PolicyErrors) as info:
        parse(spec, **kw)
    return [str(e) for e in info.value.errors]


def test_every_field_is_parsed() -> None:
    p = parse("""
selector:
  matchLabels:
    app: web
action: DENY
rules:
- from:
  - source:
      principals: ["a"]
      notPrincipals: ["b"]
      requestPrincipals: ["i/s"]
      notRequestPrincipals: ["*"]
      namespaces: ["n"]
      notNamespaces: ["m"]
      ipBlocks: ["10.0.0.0/8"]
      notIpBlocks: ["10.1.0.0/16"]
      remoteIpBlocks: ["1.2.3.4"]
      notRemoteIpBlocks: ["::1"]
      trustDomains: ["td"]
      notTrustDomains: ["bad*"]
  - source:
      serviceAccounts: ["ns/sa"]
      notServiceAccounts: ["sa"]
  to:
  - operation:
      hosts: ["h"]
      notHosts: ["nh"]
      ports: ["80"]
      notPorts: ["81"]
      methods: ["GET"]
      notMethods: ["PUT"]
      paths: ["/a", "/b/{*}"]
      notPaths: ["/c"]
  when:
  - key: request.headers[X-Env]
    values: ["prod"]
    notValues: ["dev"]
""", api="security.istio.io/v1beta1")
    assert p.action is Action.DENY
    assert p.selector == {"app": "web"}
    assert p.api_version == "security.istio.io/v1beta1"
    rule = p.rules[0]
    assert rule.from_ is not None and rule.to is not None
    assert rule.from_[0] == Source(
        principals=("a",), not_principals=("b",), request_principals=("i/s",),
        not_request_principals=("*",), namespaces=("n",), not_namespaces=("m",),
        ip_blocks=("10.0.0.0/8",), not_ip_blocks=("10.1.0.0/16",),
        remote_ip_blocks=("1.2.3.4",), not_remote_ip_blocks=("::1",),
        trust_domains=("td",), not_trust_domains=("bad*",))
    assert rule.from_[1] == Source(service_accounts=("ns/sa",), not_service_accounts=("sa",))
    assert rule.to[0] == Operation(
        hosts=("h",), not_hosts=("nh",), ports=("80",), not_ports=("81",), methods=("GET",),
        not_methods=("PUT",), paths=("/a", "/b/{*}"), not_paths=("/c",))
    assert rule.when == (Condition("request.headers[X-Env]", Attribute.REQUEST_HEADER,
                                   ("x-env",), ("prod",), ("dev",)),)
    assert p.rule_name(0) == "ns[foo]-policy[p]-rule[0]"


def test_defaults() -> None:
    p = parse("{}")
    assert p.action is Action.ALLOW and p.rules == () and p.selector is None
    assert not p.dry_run and p.target_refs == () and p.provider is None
    empty_rule = parse("rules: [{}]").rules[0]
    assert empty_rule.from_ is None and empty_rule.to is None and empty_rule.when == ()


def test_target_refs_are_kept() -> None:
    p = parse("""
targetRef:
  kind: Gateway
  group: gateway.networking.k8s.io
  name: gw
""")
    assert p.target_refs == (TargetRef("Gateway", "gw", "gateway.networking.k8s.io"),)
    many = parse("targetRefs:\n- {kind: Service, group: '', name: a}\n- {kind: Service, name: b}")
    assert [r.name for r in many.target_refs] == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("T", True), ("TRUE", True), ("True", True),
     ("t", True), ("false", False), ("0", False), ("F", False), ("False", False)],
)
def test_dry_run_uses_go_parse_bool(value: str, expected: bool) -> None:
    assert parse_bool(value) is expected
    p = parse("rules: [{}]", annotations=f'{{"istio.io/dry-run": "{value}"}}')
    assert p.dry_run is expected


def test_condition_keys() -> None:
    assert parse_condition_key("request.auth.claims[a][b]") == (
        Attribute.REQUEST_CLAIMS, ("a", "b"))
    assert parse_condition_key("request.auth.claims[foo.com/name]") == (
        Attribute.REQUEST_CLAIMS, ("foo.com/name",))
    assert parse_condition_key("experimental.envoy.filters.a.b[c]") == (
        Attribute.ENVOY_METADATA, ("envoy.filters.a.b", "c"))
    assert parse_condition_key("source.ip") == (Attribute.SOURCE_IP, ())
    assert bracket_names("[a]x[b]") == ("a]x[b",)  # not a clean sequence: one name
    assert bracket_names("[a][b]") == ("a", "b")


# --- validation errors -------------------------------------------------------------------


def test_unknown_fields_are_named_with_line() -> None:
    msgs = errors("""
rules:
- from:
  - source:
      principal: ["a"]
""")
    assert any("p.yaml:10" in m and "spec.rules[0].from[0].source.principal" in m
               and "unknown field 'principal'" in m for m in msgs), msgs


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ("rules:\n- from:\n  - source:\n      ipBlocks: ['10.0.0.300']",
         "spec.rules[0].from[0].source.ipBlocks[0]", "invalid IP"),
        ("rules:\n- to:\n  - operation:\n      ports: ['http']",
         "spec.rules[0].to[0].operation.ports[0]", "not a decimal"),
        ("rules:\n- to:\n  - operation:\n      ports: ['70000']",
         "spec.rules[0].to[0].operation.ports[0]", "out of range"),
        ("rules:\n- to:\n  - operation:\n      ports: [80]",
         "spec.rules[0].to[0].operation.ports[0]", "must be a string"),
        ("rules:\n- to:\n  - operation:\n      paths: ['/{**}/a/{*}']",
         "spec.rules[0].to[0].operation.paths[0]", "not the last operator"),
        ("rules:\n- to:\n  - operation:\n      paths: ['/a/{x}']",
         "spec.rules[0].to[0].operation.paths[0]", "outside a supported template"),
        ("rules:\n- to:\n  - operation:\n      paths: ['/a*/{*}']",
         "spec.rules[0].to[0].operation.paths[0]", "not a valid literal"),
        ("rules:\n- to:\n  - operation:\n      paths: ['{*}/a']",
         "spec.rules[0].to[0].operation.paths[0]", "must start with '/'"),
        ("rules:\n- to:\n  - operation:\n      methods: ['']",
         "spec.rules[0].to[0].operation.methods[0]", "empty value"),
        ("rules:\n- when:\n  - key: source.ip\n    values: ['x']",
         "spec.rules[0].when[0].values[0]", "invalid IP"),
        ("rules:\n- when:\n  - key: destination.port\n    notValues: ['-1']",
         "spec.rules[0].when[0].notValues[0]", "not a decimal"),
        ("rules:\n- when:\n  - key: request.headers[a]",
         "spec.rules[0].when[0]", "at least one of values or notValues"),
        ("rules:\n- when:\n  - key: destination.labels[app]\n    values: ['a']",
         "spec.rules[0].when[0].key", "no longer supported"),
        ("rules:\n- when:\n  - key: request.time\n    values: ['a']",
         "spec.rules[0].when[0].key", "unknown attribute"),
        ("rules:\n- when:\n  - key: request.headers[]\n    values: ['a']",
         "spec.rules[0].when[0].key", "bad key"),
        ("rules:\n- when:\n  - values: ['a']",
         "spec.rules[0].when[0].key", "key must not be empty"),
        ("rules:\n- from: []", "spec.rules[0].from", "must not be empty"),
        ("rules:\n- to: []", "spec.rules[0].to", "must not be empty"),
        ("rules:\n- from:\n  - source: {}", "spec.rules[0].from[0].source", "must not be empty"),
        ("rules:\n- to:\n  - {}", "spec.rules[0].to[0].operation", "must be set"),
        ("rules:\n- null", "spec.rules[0]", "must not be null"),
        ("rules:\n- from:\n  - source:\n      serviceAccounts: ['a']\n      principals: ['b']",
         "spec.rules[0].from[0].source", "cannot set serviceAccounts"),
        ("rules:\n- from:\n  - source:\n      serviceAccounts: ['ns/*']",
         "spec.rules[0].from[0].source.serviceAccounts[0]", "wildcards"),
        ("rules:\n- from:\n  - source:\n      serviceAccounts: ['a/b/c']",
         "spec.rules[0].from[0].source.serviceAccounts[0]", "<namespace>/<name>"),
        ("rules:\n- from:\n  - source:\n      serviceAccounts: "
         + str([f"s{i}" for i in range(17)]),
         "spec.rules[0].from[0].source.serviceAccounts", "at most 16"),
        ("rules:\n- from:\n  - source:\n      trustDomains: ['*a*']",
         "spec.rules[0].from[0].source.trustDomains[0]", "at most one"),
        ("action: DENY", "spec.rules", "DENY policy without rules"),
        ("action: REJECT\nrules: [{}]", "spec.action", "invalid action"),
        ("action: CUSTOM\nrules: [{}]", "spec.provider", "must set provider.name"),
        ("action: CUSTOM\nprovider: {name: Bad_Name}\nrules: [{}]", "spec.provider.name",
         "invalid provider name"),
        ("action: CUSTOM\nprovider: {name: ext}", "spec.rules", "must have rules"),
        ("provider: {name: ext}\nrules: [{}]", "spec.provider", "only be set with action CUSTOM"),
        ("action: CUSTOM\nprovider: {name: ext}\nrules:\n- from:\n  - source:\n"
         "      requestPrincipals: ['*']", "spec.rules[0].from[0].source.requestPrincipals",
         "not supported with CUSTOM"),
        ("action: CUSTOM\nprovider: {name: ext}\nrules:\n- when:\n"
         "  - key: request.auth.claims[a]\n    values: ['x']", "spec.rules[0].when[0].key",
         "not supported with CUSTOM"),
        ("selector: {matchLabels: {app: a}}\ntargetRef: {kind: Gateway, name: g}",
         "spec.targetRef", "only one of selector"),
        ("targetRef: {kind: Gateway, name: g, namespace: other}", "spec.targetRef.namespace",
         "cross namespace"),
        ("targetRef: {name: g}", "spec.targetRef.kind", "spec.targetRef.kind: Required value"),
        ("selector: {matchLabels: {app: 'web*'}}", "spec.selector.matchLabels.app",
         "wildcard not allowed"),
        ("selector: {labels: {app: web}}", "spec.selector.labels", "unknown field"),
        ("rules: {}", "spec.rules", "must be a list"),
        ("rules:\n- to:\n  - operation:\n      paths: '/a'",
         "spec.rules[0].to[0].operation.paths", "must be a list of strings"),
    ],
)
def test_invalid_values(spec: str, field: str, text: str) -> None:
    msgs = errors(spec)
    assert any(f": {field}: " in m and text in m for m in msgs), msgs


def test_dry_run_rejected_on_audit_and_bad_values() -> None:
    msgs = errors("action: AUDIT\nrules: [{}]", annotations='{"istio.io/dry-run": "true"}')
    assert any("only supported on ALLOW and DENY" in m for m in msgs)
    msgs = errors("rules: [{}]", annotations='{"istio.io/dry-run": "yes"}')
    assert any("metadata.annotations.istio.io/dry-run" in m and "invalid boolean" in m
               for m in msgs)


def test_wrong_api_version() -> None:
    msgs = errors("{}", api="security.istio.io/v1alpha1")
    assert any("unsupported apiVersion" in m for m in msgs)


def test_all_errors_of_a_resource_are_reported() -> None:
    msgs = errors("""
action: DENY
rules:
- from:
  - source:
      ipBlocks: ["bad"]
  to:
  - operation:
      ports: ["99999"]
  when:
  - key: nope
    values: ["x"]
""")
    assert len(msgs) == 3


def test_custom_policy_parses() -> None:
    p = parse("""
action: CUSTOM
provider:
  name: my-ext-authz
rules:
- to:
  - operation:
      paths: ["/admin"]
  from:
  - source:
      ipBlocks: ["10.0.0.0/8"]
""")
    assert p.action is Action.CUSTOM and p.provider == "my-ext-authz"


# --- Istio's own examples ----------------------------------------------------------------


def _conformance_inputs() -> list[Path]:
    if not CONFORMANCE.is_dir():
        return []
    return sorted(CONFORMANCE.glob("*/*-in.yaml"))


@pytest.mark.parametrize("path", _conformance_inputs() or [None], ids=lambda p: str(p)[-50:])
def test_istio_builder_inputs_parse(path: Path | None) -> None:
    if path is None:
        require_shared(BUILDER)
        pytest.fail(f"{CONFORMANCE} is there but holds no */*-in.yaml")
    resources = parse_text(path.read_text(encoding="utf-8"), str(path))
    assert resources
    for res in resources:
        p = parse_authorization_policy(res)
        assert p.namespace == "foo"
        if "custom" in path.name:
            assert p.action is Action.CUSTOM


def test_full_rule_example_compiles_to_istio_shape() -> None:
    path = require_shared(f"{BUILDER}/http/allow-full-rule-in.yaml")
    (res,) = parse_text(path.read_text(encoding="utf-8"), str(path))
    p = parse_authorization_policy(res)
    assert len(p.rules) == 2
    keys = [c.attribute for c in p.rules[1].when]
    assert Attribute.ENVOY_METADATA in keys and Attribute.REQUEST_CLAIMS in keys
    assert p.rules[1].when[9].names == ("nested1", "nested2")
