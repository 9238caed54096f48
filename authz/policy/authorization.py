"""AuthorizationPolicy resources -> validated, immutable values.

Validation follows Istio's CRD schema and ``ValidateAuthorizationPolicy``
(reference B.3, B.10, C.1): a policy Istio would reject is rejected here, with
the field path named, so a file that loads here also applies in a mesh. Every
problem of one resource is reported together (``PolicyErrors``).

Two kinds of policy are kept but never enforced by this server (the engine
lists them so the snapshot can explain why):

- ``targetRef``/``targetRefs`` policies attach to gateways and waypoints only.
  Istio's ``ShouldAttachPolicy`` never attaches them to a sidecar workload,
  which is what a route's scope (namespace + labels) describes.
- ``action: CUSTOM`` policies configure Envoy: they decide *when Envoy calls*
  the external provider, and this server is that provider. Re-applying them
  here would be circular, so they are validated (Istio's CUSTOM rules) and
  otherwise ignored. Rejecting them instead would break files written for a
  mesh where the same policy set also enables this server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from authz.policy.attributes import (
    CONDITION_CHECKS,
    OPERATION_CHECKS,
    SOURCE_CHECKS,
    Attribute,
    bracket_names,
    parse_condition_key,
)
from authz.policy.errors import Location, PolicyErrors
from authz.policy.fields import FieldParser, TargetRef, type_name
from authz.policy.load import Resource

__all__ = [
    "CUSTOM_EXPLANATION",
    "TARGET_REF_EXPLANATION",
    "Action",
    "Attribute",
    "AuthorizationPolicy",
    "Condition",
    "Operation",
    "Rule",
    "Source",
    "bracket_names",
    "is_authorization_policy",
    "parse_authorization_policy",
    "parse_bool",
    "parse_condition_key",
]

KIND = "AuthorizationPolicy"
API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
DRY_RUN_ANNOTATION = "istio.io/dry-run"
MAX_SERVICE_ACCOUNTS = 16
MAX_RULES = 512
MAX_FROM = 512

__all__ = [
    "API_VERSIONS", "CUSTOM_EXPLANATION", "KIND", "TARGET_REF_EXPLANATION", "Action",
    "Attribute", "AuthorizationPolicy", "Condition", "Operation", "Rule", "Source",
    "TargetRef", "bracket_names", "is_authorization_policy", "parse_authorization_policy",
    "parse_bool", "parse_condition_key",
]


class Action(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"



@dataclass(frozen=True, slots=True)
class Source:
    """``rules[].from[].source``: every set field must match (AND); () = unset."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """``rules[].to[].operation``: every set field must match (AND); () = unset."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


# YAML field name -> dataclass attribute, in the CRD's order.
SOURCE_FIELDS: Mapping[str, str] = MappingProxyType({
    "principals": "principals",
    "notPrincipals": "not_principals",
    "requestPrincipals": "request_principals",
    "notRequestPrincipals": "not_request_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "ipBlocks": "ip_blocks",
    "notIpBlocks": "not_ip_blocks",
    "remoteIpBlocks": "remote_ip_blocks",
    "notRemoteIpBlocks": "not_remote_ip_blocks",
    "serviceAccounts": "service_accounts",
    "notServiceAccounts": "not_service_accounts",
    "trustDomains": "trust_domains",
    "notTrustDomains": "not_trust_domains",
})
OPERATION_FIELDS: Mapping[str, str] = MappingProxyType({
    "hosts": "hosts",
    "notHosts": "not_hosts",
    "ports": "ports",
    "notPorts": "not_ports",
    "methods": "methods",
    "notMethods": "not_methods",
    "paths": "paths",
    "notPaths": "not_paths",
})


_CUSTOM_FORBIDDEN_SOURCE = ("principals", "notPrincipals", "namespaces", "notNamespaces",
                            "serviceAccounts", "notServiceAccounts", "trustDomains",
                            "notTrustDomains", "requestPrincipals", "notRequestPrincipals")
_CUSTOM_FORBIDDEN_KEYS = (Attribute.SOURCE_NAMESPACE, Attribute.SOURCE_SERVICE_ACCOUNT,
                          Attribute.SOURCE_TRUST_DOMAIN, Attribute.SOURCE_PRINCIPAL,
                          Attribute.REQUEST_PRINCIPAL, Attribute.REQUEST_AUDIENCES,
                          Attribute.REQUEST_PRESENTER, Attribute.REQUEST_CLAIMS)
_PROVIDER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


@dataclass(frozen=True, slots=True)
class Condition:
    """``rules[].when[]``: ``key`` parsed once into an attribute and its names."""

    key: str
    attribute: Attribute
    names: tuple[str, ...] = ()
    """Header name (lower-cased), claim path, or (filter, key) for Envoy metadata."""
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """``from``/``to`` None = absent ("any"); ``when`` conditions are ANDed."""

    from_: tuple[Source, ...] | None = None
    to: tuple[Operation, ...] | None = None
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    name: str
    namespace: str
    action: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()
    """No rules: the policy matches nothing (an ALLOW then denies all)."""
    selector: Mapping[str, str] | None = None
    """``selector.matchLabels``; None = no selector (whole namespace)."""
    target_refs: tuple[TargetRef, ...] = ()
    """``targetRef`` and ``targetRefs`` together; such a policy never applies to a workload."""
    provider: str | None = None
    dry_run: bool = False
    api_version: str = API_VERSIONS[0]
    location: Location | None = field(default=None, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rule_name(self, index: int) -> str:
        """Istio's RBAC policy name (B.11), used in logs and results."""
        return f"ns[{self.namespace}]-policy[{self.name}]-rule[{index}]"


def parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``, which Istio uses for ``istio.io/dry-run``."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}")


# --- parsing ------------------------------------------------------------------


class _Parser(FieldParser):
    """Walks one resource, collecting every error instead of stopping at the first."""

    def strings(
        self, value: Any, path: str, check: Callable[[str], str | None] | None = None
    ) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(path, f"must be a list of strings, got {type_name(value)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            text = self.string(item, f"{path}[{i}]")
            if text is None:
                continue
            if text == "":
                self.error(f"{path}[{i}]", "empty value not allowed")
                continue
            problem = check(text) if check else None
            if problem:
                self.error(f"{path}[{i}]", problem)
                continue
            out.append(text)
        return tuple(out)

    # -- spec ------------------------------------------------------------------

    def policy(self) -> AuthorizationPolicy | None:
        res = self.res
        if res.api_version not in API_VERSIONS:
            self.error("apiVersion", f"unsupported apiVersion {res.api_version!r} for {KIND} "
                       f"(expected one of {', '.join(API_VERSIONS)})")
        spec = res.spec
        self.known(spec, ("selector", "targetRef", "targetRefs", "action", "provider",
                          "rules"), "spec")
        action = self.action(spec.get("action"))
        selector = self.selector(spec["selector"]) if "selector" in spec else None
        refs = self.target_refs(spec)
        present = [k for k in ("selector", "targetRef", "targetRefs") if spec.get(k) is not None]
        if len(present) > 1:
            self.error(f"spec.{present[1]}",
                       "only one of selector, targetRef or targetRefs can be set")
        provider = self.provider(spec.get("provider"), action)
        rules: list[Rule] = []
        raw_rules = spec.get("rules")
        if raw_rules is not None:
            for i, raw in enumerate(self.items(raw_rules, "spec.rules", MAX_RULES)):
                rule = self.rule(raw, f"spec.rules[{i}]", action)
                if rule is not None:
                    rules.append(rule)
        if action is Action.DENY and not raw_rules:
            self.error("spec.rules", "a DENY policy without rules is meaningless "
                       "(it never matches); add rules or remove the policy")
        if action is Action.CUSTOM and not raw_rules:
            self.error("spec.rules", "a CUSTOM policy must have rules")
        dry_run = self.dry_run(action)
        if self.errors or action is None:
            return None
        return AuthorizationPolicy(
            name=res.name, namespace=res.namespace, action=action, rules=tuple(rules),
            selector=selector, target_refs=refs, provider=provider, dry_run=dry_run,
            api_version=res.api_version, location=res.location,
        )

    def action(self, value: Any) -> Action | None:
        if value is None or value == "":
            return Action.ALLOW
        if isinstance(value, str) and value in Action.__members__:
            return Action(value)
        self.error("spec.action", f"invalid action {value!r} (valid: ALLOW, DENY, AUDIT, CUSTOM)")
        return None

    def provider(self, value: Any, action: Action | None) -> str | None:
        if value is None:
            if action is Action.CUSTOM:
                self.error("spec.provider", "a CUSTOM policy must set provider.name")
            return None
        data = self.mapping(value, "spec.provider")
        if data is None:
            return None
        self.known(data, ("name",), "spec.provider")
        name = self.string(data.get("name", ""), "spec.provider.name") or ""
        if action is not Action.CUSTOM:
            self.error("spec.provider", "provider can only be set with action CUSTOM")
        elif not name:
            self.error("spec.provider.name", "a CUSTOM policy must set provider.name")
        elif len(name) > 63 or not _PROVIDER_NAME.fullmatch(name):
            self.error("spec.provider.name",
                       f"invalid provider name {name!r} (a DNS-1123 label: [a-z0-9-], "
                       "at most 63 characters, no leading or trailing '-')")
        return name or None

    def dry_run(self, action: Action | None) -> bool:
        annotations = self.res.metadata.get("annotations") or {}
        if not isinstance(annotations, dict) or DRY_RUN_ANNOTATION not in annotations:
            return False
        path = f"metadata.annotations.{DRY_RUN_ANNOTATION}"
        value = annotations[DRY_RUN_ANNOTATION]
        if action not in (Action.ALLOW, Action.DENY, None):
            self.error(path, f"dry-run is only supported on ALLOW and DENY policies, "
                       f"not {action}")
            return False
        if not isinstance(value, str):
            self.error(path, f"annotation values are strings, got {type_name(value)} (quote it)")
            return False
        try:
            return parse_bool(value)
        except ValueError as exc:
            self.error(path, f"{exc} (use \"true\" or \"false\")")
            return False

    # -- rules -----------------------------------------------------------------

    def rule(self, value: Any, path: str, action: Action | None) -> Rule | None:
        if value is None:
            self.error(path, "rule must not be null")
            return None
        data = self.mapping(value, path)
        if data is None:
            return None
        self.known(data, ("from", "to", "when"), path)
        sources: tuple[Source, ...] | None = None
        operations: tuple[Operation, ...] | None = None
        if data.get("from") is not None:
            items = self.items(data["from"], f"{path}.from", MAX_FROM)
            if not items and isinstance(data["from"], list):
                self.error(f"{path}.from", "from must not be empty (omit it to match any source)")
            sources = tuple(
                s for i, item in enumerate(items)
                if (s := self.source(item, f"{path}.from[{i}]", action)) is not None
            )
        if data.get("to") is not None:
            items = self.items(data["to"], f"{path}.to")
            if not items and isinstance(data["to"], list):
                self.error(f"{path}.to", "to must not be empty (omit it to match any operation)")
            operations = tuple(
                o for i, item in enumerate(items)
                if (o := self.operation(item, f"{path}.to[{i}]")) is not None
            )
        conditions: list[Condition] = []
        if data.get("when") is not None:
            for i, item in enumerate(self.items(data["when"], f"{path}.when")):
                cond = self.condition(item, f"{path}.when[{i}]", action)
                if cond is not None:
                    conditions.append(cond)
        return Rule(from_=sources, to=operations, when=tuple(conditions))

    def source(self, value: Any, path: str, action: Action | None) -> Source | None:
        data = self.mapping(value, path) if value is not None else None
        if data is None:
            if value is None:
                self.error(path, "from entry must not be null")
            return None
        self.known(data, ("source",), path)
        path = f"{path}.source"
        if data.get("source") is None:
            self.error(path, "from.source must be set")
            return None
        src = self.mapping(data["source"], path)
        if src is None:
            return None
        self.known(src, tuple(SOURCE_FIELDS), path)
        values = {
            attr: self.strings(src.get(name), f"{path}.{name}", SOURCE_CHECKS.get(name))
            for name, attr in SOURCE_FIELDS.items()
        }
        if not any(src.get(name) for name in SOURCE_FIELDS):
            self.error(path, "source must not be empty (set at least one field)")
        if len(src.get("serviceAccounts") or ()) > MAX_SERVICE_ACCOUNTS:
            self.error(f"{path}.serviceAccounts", f"at most {MAX_SERVICE_ACCOUNTS} values")
        if len(src.get("notServiceAccounts") or ()) > MAX_SERVICE_ACCOUNTS:
            self.error(f"{path}.notServiceAccounts", f"at most {MAX_SERVICE_ACCOUNTS} values")
        has_sa = src.get("serviceAccounts") is not None or src.get("notServiceAccounts") is not None
        if has_sa and any(src.get(k) is not None for k in
                          ("principals", "notPrincipals", "namespaces", "notNamespaces")):
            self.error(path, "cannot set serviceAccounts with namespaces or principals")
        if action is Action.CUSTOM:
            for name in _CUSTOM_FORBIDDEN_SOURCE:
                if src.get(name):
                    self.error(f"{path}.{name}", f"{name} is not supported with CUSTOM action "
                               "(Envoy calls the provider before JWT and identity checks)")
        return Source(**values)

    def operation(self, value: Any, path: str) -> Operation | None:
        data = self.mapping(value, path) if value is not None else None
        if data is None:
            if value is None:
                self.error(path, "to entry must not be null")
            return None
        self.known(data, ("operation",), path)
        path = f"{path}.operation"
        if data.get("operation") is None:
            self.error(path, "to.operation must be set")
            return None
        op = self.mapping(data["operation"], path)
        if op is None:
            return None
        self.known(op, tuple(OPERATION_FIELDS), path)
        values = {
            attr: self.strings(op.get(name), f"{path}.{name}", OPERATION_CHECKS.get(name))
            for name, attr in OPERATION_FIELDS.items()
        }
        if not any(op.get(name) for name in OPERATION_FIELDS):
            self.error(path, "operation must not be empty (set at least one field)")
        return Operation(**values)

    def condition(self, value: Any, path: str, action: Action | None) -> Condition | None:
        data = self.mapping(value, path) if value is not None else None
        if data is None:
            if value is None:
                self.error(path, "condition must not be null")
            return None
        self.known(data, ("key", "values", "notValues"), path)
        key = self.string(data.get("key", ""), f"{path}.key")
        if key is None:
            return None
        if not key:
            self.error(f"{path}.key", "key must not be empty")
            return None
        try:
            attribute, names = parse_condition_key(key)
        except ValueError as exc:
            self.error(f"{path}.key", str(exc))
            return None
        if action is Action.CUSTOM and attribute in _CUSTOM_FORBIDDEN_KEYS:
            self.error(f"{path}.key", f"{key} is not supported with CUSTOM action "
                       "(Envoy calls the provider before JWT and identity checks)")
        check = CONDITION_CHECKS.get(attribute)
        values = self.strings(data.get("values"), f"{path}.values", check)
        not_values = self.strings(data.get("notValues"), f"{path}.notValues", check)
        if not data.get("values") and not data.get("notValues"):
            self.error(path, f"at least one of values or notValues must be set for key {key}")
        return Condition(key=key, attribute=attribute, names=names, values=values,
                         not_values=not_values)



CUSTOM_EXPLANATION = (
    "this server is the CUSTOM provider; CUSTOM policies configure Envoy (when to call "
    "this server), not this server"
)
TARGET_REF_EXPLANATION = (
    "targetRef/targetRefs policies attach only to a Gateway-API gateway scope: routes whose "
    "labels include gateway.networking.k8s.io/gateway-name=<Gateway name>, in the policy's "
    "namespace; sidecar-style scopes never get them"
)



def is_authorization_policy(resource: Resource) -> bool:
    return resource.kind == KIND and resource.api_version.startswith("security.istio.io/")


def parse_authorization_policy(resource: Resource) -> AuthorizationPolicy:
    """Validate and convert one resource. Raises ``PolicyErrors`` listing every problem."""
    if resource.kind != KIND:
        raise PolicyErrors([resource.error("kind", f"expected kind {KIND}, got {resource.kind}")])
    parser = _Parser(resource)
    policy = parser.policy()
    if parser.errors or policy is None:
        raise PolicyErrors(parser.errors or [resource.error("spec", "invalid policy")])
    return policy
