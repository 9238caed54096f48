"""AuthorizationPolicy rules -> predicates over an ``AuthzContext`` (reference B.2, B.5).

The shape follows Istio's RBAC translation exactly:

- a rule matches iff (any ``from`` matches) AND (any ``to`` matches) AND (every
  ``when`` condition matches); an absent ``from``/``to`` is "any";
- inside one ``source``/``operation`` every set field must match;
- inside one field the values are ORed;
- a ``not*`` field (or ``notValues``) is NOT(OR of its values), ANDed with the rest.

A request that lacks an attribute (no mTLS peer, no token, no header) fails
every positive test and therefore satisfies every negated one, as Envoy does.
Everything is built here, once; a ``Check`` only compares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from authz.policy.authorization import (
    Action,
    Attribute,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
)
from authz.policy.fields import attaches
from authz.policy.grammar import parse_port
from authz.rbac import match
from authz.rbac.context import AuthzContext
from authz.request.address import IPAddress
from authz.request.scope import Scope

__all__ = [
    "AllOf",
    "Check",
    "ClaimCheck",
    "CompiledPolicy",
    "CompiledRule",
    "Compiler",
    "HeaderValue",
    "IpCheck",
    "MetadataValue",
    "PortCheck",
    "RequestPrincipalCheck",
    "StringCheck",
    "compile_policy",
]


class Check(Protocol):
    """One compiled test; ``label`` says what it tests, for explanations."""

    @property
    def label(self) -> str: ...

    def __call__(self, ctx: AuthzContext) -> bool: ...


# --- attribute readers ----------------------------------------------------------


def _peer_principal(ctx: AuthzContext) -> str | None:
    return ctx.peer_principal


def _host(ctx: AuthzContext) -> str | None:
    return ctx.view.host or None


def _method(ctx: AuthzContext) -> str | None:
    return ctx.view.method or None


def _path(ctx: AuthzContext) -> str | None:
    return ctx.view.path or None


def _sni(ctx: AuthzContext) -> str | None:
    return ctx.view.sni or None


def _source_address(ctx: AuthzContext) -> IPAddress | None:
    return ctx.source_address


def _remote_address(ctx: AuthzContext) -> IPAddress | None:
    return ctx.remote_address


def _destination_address(ctx: AuthzContext) -> IPAddress | None:
    return ctx.destination_address


@dataclass(frozen=True, slots=True)
class HeaderValue:
    """Reads one request header. Rules read headers only through this, so the headers
    a rule depends on can be listed (``CompiledRule.header_names``)."""

    name: str

    def __call__(self, ctx: AuthzContext) -> str | None:
        return ctx.view.headers.get(self.name)


@dataclass(frozen=True, slots=True)
class MetadataValue:
    """Reads one string of Envoy dynamic metadata: ``experimental.envoy.filters.<f>[<k>]``
    is filter ``envoy.filters.<f>``, key ``<k>`` (Istio's ``metadataGenerator``)."""

    filter: str
    key: str

    def __call__(self, ctx: AuthzContext) -> str | None:
        values = ctx.view.metadata.get(self.filter)
        return values.get(self.key) if values is not None else None


# --- checks -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringCheck:
    """A string attribute against an OR of matchers; ``negate`` for the not* twin."""

    label: str
    read: Callable[[AuthzContext], str | None]
    matchers: tuple[match.StringMatcher, ...]
    negate: bool = False

    def __call__(self, ctx: AuthzContext) -> bool:
        value = self.read(ctx)
        if value is not None:
            for m in self.matchers:
                if m.matches(value):
                    return not self.negate
        return self.negate


@dataclass(frozen=True, slots=True)
class IpCheck:
    label: str
    read: Callable[[AuthzContext], IPAddress | None]
    cidrs: match.CidrMatcher
    negate: bool = False

    def __call__(self, ctx: AuthzContext) -> bool:
        return self.cidrs.matches(self.read(ctx)) is not self.negate


@dataclass(frozen=True, slots=True)
class PortCheck:
    """Envoy ``destination_port``: the port the connection arrived on."""

    label: str
    ports: frozenset[int]
    negate: bool = False

    def __call__(self, ctx: AuthzContext) -> bool:
        port = ctx.view.destination.port
        return (port is not None and port in self.ports) is not self.negate


@dataclass(frozen=True, slots=True)
class RequestPrincipalCheck:
    label: str
    matchers: tuple[match.RequestPrincipalMatcher, ...]
    negate: bool = False

    def __call__(self, ctx: AuthzContext) -> bool:
        claims = ctx.claims
        if claims is not None:
            for m in self.matchers:
                if m.matches(claims):
                    return not self.negate
        return self.negate


@dataclass(frozen=True, slots=True)
class ClaimCheck:
    label: str
    claim: match.ClaimMatcher
    negate: bool = False

    def __call__(self, ctx: AuthzContext) -> bool:
        return self.claim.matches(ctx.claims) is not self.negate


@dataclass(frozen=True, slots=True)
class AllOf:
    """One ``source``/``operation``: every set field must hold."""

    checks: tuple[Check, ...]

    def __call__(self, ctx: AuthzContext) -> bool:
        # A loop, not all(genexpr): no generator object per call on the hot path.
        for check in self.checks:  # noqa: SIM110
            if not check(ctx):
                return False
        return True


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    """``ns[<ns>]-policy[<name>]-rule[<i>]``."""
    sources: tuple[AllOf, ...] | None
    operations: tuple[AllOf, ...] | None
    conditions: tuple[Check, ...]

    def header_names(self) -> frozenset[str]:
        """Every header this rule can read (the others cannot change its answer)."""
        checks = [*self.conditions]
        for group in (*(self.sources or ()), *(self.operations or ())):
            checks.extend(group.checks)
        return frozenset(c.read.name for c in checks
                         if isinstance(c, StringCheck) and isinstance(c.read, HeaderValue))

    def matches(self, ctx: AuthzContext) -> bool:
        for cond in self.conditions:
            if not cond(ctx):
                return False
        if self.sources is not None and not _any_holds(self.sources, ctx):
            return False
        return self.operations is None or _any_holds(self.operations, ctx)


def _any_holds(checks: tuple[AllOf, ...], ctx: AuthzContext) -> bool:
    for check in checks:  # noqa: SIM110 (no generator per call)
        if check(ctx):
            return True
    return False


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    policy: AuthorizationPolicy
    rules: tuple[CompiledRule, ...]

    @property
    def action(self) -> Action:
        return self.policy.action

    @property
    def dry_run(self) -> bool:
        return self.policy.dry_run

    def applies(self, scope: Scope) -> bool:
        """No selector: the whole namespace; ``matchLabels``: a subset of the labels;
        ``targetRefs``: the Gateway-API gateway the scope names (see ``attaches``)."""
        p = self.policy
        return attaches(p.namespace, p.selector, p.target_refs, scope.namespace, scope.labels)


# --- compilation --------------------------------------------------------------------


def _pair(
    out: list[Check],
    values: Sequence[str],
    not_values: Sequence[str],
    make: Callable[[str, tuple[str, ...], bool], Check],
    label: str,
) -> None:
    if values:
        out.append(make(label, tuple(values), False))
    if not_values:
        out.append(make(f"not {label}", tuple(not_values), True))


def _strings(
    read: Callable[[AuthzContext], str | None],
    build: Callable[[str], match.StringMatcher],
    expand: Callable[[str], Sequence[str]] = lambda v: (v,),
) -> Callable[[str, tuple[str, ...], bool], Check]:
    def make(label: str, values: tuple[str, ...], negate: bool) -> Check:
        matchers = tuple(build(x) for v in values for x in expand(v))
        return StringCheck(label, read, matchers, negate)

    return make


def _ips(
    read: Callable[[AuthzContext], IPAddress | None],
) -> Callable[[str, tuple[str, ...], bool], Check]:
    def make(label: str, values: tuple[str, ...], negate: bool) -> Check:
        return IpCheck(label, read, match.cidrs(values), negate)

    return make


def _ports(label: str, values: tuple[str, ...], negate: bool) -> Check:
    return PortCheck(label, frozenset(parse_port(v) for v in values), negate)


def _request_principals(label: str, values: tuple[str, ...], negate: bool) -> Check:
    return RequestPrincipalCheck(label, tuple(match.request_principal(v) for v in values), negate)


def _claim(path: tuple[str, ...]) -> Callable[[str, tuple[str, ...], bool], Check]:
    def make(label: str, values: tuple[str, ...], negate: bool) -> Check:
        matcher = match.ClaimMatcher(path, tuple(match.istio_string(v) for v in values))
        return ClaimCheck(label, matcher, negate)

    return make


@dataclass(frozen=True, slots=True)
class Compiler:
    """Compiles one policy's values; knows its namespace and the trust-domain bundle."""

    namespace: str
    bundle: tuple[str, ...] = ()

    def _principals(self, value: str) -> Sequence[str]:
        return match.principals_with_aliases(value, self.bundle)

    def _trust_domains(self, value: str) -> Sequence[str]:
        return match.trust_domains_with_aliases(value, self.bundle)

    def _service_account(self, value: str) -> match.StringMatcher:
        return match.service_account(value, self.namespace)

    def source(self, src: Source) -> AllOf:
        out: list[Check] = []
        principals = _strings(_peer_principal, match.principal, self._principals)
        _pair(out, src.principals, src.not_principals, principals, "principals")
        _pair(out, src.request_principals, src.not_request_principals, _request_principals,
              "requestPrincipals")
        _pair(out, src.namespaces, src.not_namespaces,
              _strings(_peer_principal, match.namespace), "namespaces")
        _pair(out, src.ip_blocks, src.not_ip_blocks, _ips(_source_address), "ipBlocks")
        _pair(out, src.remote_ip_blocks, src.not_remote_ip_blocks, _ips(_remote_address),
              "remoteIpBlocks")
        _pair(out, src.service_accounts, src.not_service_accounts,
              _strings(_peer_principal, self._service_account), "serviceAccounts")
        _pair(out, src.trust_domains, src.not_trust_domains,
              _strings(_peer_principal, match.trust_domain, self._trust_domains), "trustDomains")
        return AllOf(tuple(out))

    def operation(self, op: Operation) -> AllOf:
        out: list[Check] = []
        _pair(out, op.hosts, op.not_hosts, _strings(_host, match.host), "hosts")
        _pair(out, op.ports, op.not_ports, _ports, "ports")
        _pair(out, op.methods, op.not_methods, _strings(_method, match.method), "methods")
        _pair(out, op.paths, op.not_paths, _strings(_path, match.path), "paths")
        return AllOf(tuple(out))

    def condition(self, cond: Condition) -> list[Check]:
        out: list[Check] = []
        _pair(out, cond.values, cond.not_values, self._condition_maker(cond), cond.key)
        return out

    def _condition_maker(self, cond: Condition) -> Callable[[str, tuple[str, ...], bool], Check]:
        attr = cond.attribute
        if attr is Attribute.REQUEST_HEADER:
            return _strings(HeaderValue(cond.names[0]), match.header_value)
        makers: Mapping[Attribute, Callable[[str, tuple[str, ...], bool], Check]] = {
            Attribute.SOURCE_IP: _ips(_source_address),
            Attribute.REMOTE_IP: _ips(_remote_address),
            Attribute.DESTINATION_IP: _ips(_destination_address),
            Attribute.SOURCE_NAMESPACE: _strings(_peer_principal, match.namespace),
            Attribute.SOURCE_PRINCIPAL: _strings(_peer_principal, match.principal,
                                                 self._principals),
            Attribute.SOURCE_SERVICE_ACCOUNT: _strings(_peer_principal, self._service_account),
            Attribute.SOURCE_TRUST_DOMAIN: _strings(_peer_principal, match.trust_domain,
                                                    self._trust_domains),
            Attribute.REQUEST_PRINCIPAL: _request_principals,
            Attribute.REQUEST_AUDIENCES: _claim(("aud",)),
            Attribute.REQUEST_PRESENTER: _claim(("azp",)),
            Attribute.REQUEST_CLAIMS: _claim(cond.names),
            Attribute.DESTINATION_PORT: _ports,
            Attribute.CONNECTION_SNI: _strings(_sni, match.istio_string),
        }
        if attr is Attribute.ENVOY_METADATA:
            return _strings(MetadataValue(*cond.names), match.istio_string)
        return makers[attr]

    def rule(self, rule: Rule, name: str) -> CompiledRule:
        sources = None if rule.from_ is None else tuple(self.source(s) for s in rule.from_)
        operations = None if rule.to is None else tuple(self.operation(o) for o in rule.to)
        conditions = tuple(c for cond in rule.when for c in self.condition(cond))
        return CompiledRule(name, sources, operations, conditions)


def compile_policy(
    policy: AuthorizationPolicy, trust_domain_bundle: Sequence[str] = ()
) -> CompiledPolicy:
    compiler = Compiler(policy.namespace, tuple(trust_domain_bundle))
    rules = tuple(compiler.rule(r, policy.rule_name(i)) for i, r in enumerate(policy.rules))
    return CompiledPolicy(policy, rules)
