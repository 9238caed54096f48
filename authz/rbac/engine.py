"""Which policies apply to a request, and what they decide (reference B.1, B.2, B.10).

Istio gives each workload the policies of the root namespace plus its own
namespace, filtered by selector, and installs them as Envoy RBAC filters in the
order AUDIT, DENY, ALLOW. ``PolicySet`` reproduces that for the scope each
request carries:

1. DENY: any matching rule of an enforced DENY policy denies;
2. ALLOW: if at least one enforced ALLOW policy applies, a rule of one must
   match (an ALLOW policy without rules still counts, and matches nothing);
3. otherwise allow.

Dry-run policies are evaluated and reported, never enforced, and do not count
as "an ALLOW exists". AUDIT policies are only reported. CUSTOM and
targetRef policies are kept for explanation and never evaluated (see
``authz.policy.authorization``).

Within one Envoy RBAC filter the policies live in a name-ordered map and the
first match is the "effective policy id"; the deciding rule reported here is
therefore the lexicographically smallest matching rule name, as Envoy logs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from authz.memo import CacheSizes, Memo
from authz.policy.authorization import (
    Action,
    AuthorizationPolicy,
)
from authz.policy.errors import PolicyError, PolicyErrors
from authz.rbac.context import AuthzContext
from authz.rbac.rules import CompiledPolicy, CompiledRule, compile_policy
from authz.request.scope import Scope

__all__ = ["NO_POLICY", "SCOPE_MEMO_SIZE", "AuthzResult", "PolicySet"]

NO_POLICY = "no_policy"
ALLOWED = "allowed"
DENIED_BY_DENY_POLICY = "denied_by_deny_policy"
NO_ALLOW_POLICY_MATCHED = "no_allow_policy_matched"


@dataclass(frozen=True, slots=True)
class AuthzResult:
    allowed: bool
    policy: str | None
    """The deciding rule, ``ns[<ns>]-policy[<name>]-rule[<i>]``; None if no rule decided."""
    reason: str
    """``no_policy`` | ``allowed`` | ``denied_by_deny_policy`` | ``no_allow_policy_matched``."""
    dry_run: tuple[str, ...] = ()
    """What dry-run policies would have done, e.g. ``deny ns[foo]-policy[bar]-rule[0]``."""
    audit: tuple[str, ...] = ()
    """The first matching rule of each AUDIT policy that matched."""


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    policy: CompiledPolicy
    rule: CompiledRule


def _entries(policies: Iterable[CompiledPolicy]) -> tuple[_Entry, ...]:
    """Every rule of ``policies`` in Envoy's evaluation order (by rule name)."""
    entries = [_Entry(r.name, p, r) for p in policies for r in p.rules]
    return tuple(sorted(entries, key=lambda e: e.name))


@dataclass(frozen=True, slots=True)
class _Bucket:
    """One namespace's policies, split the way Istio splits them into RBAC filters."""

    deny: tuple[_Entry, ...] = ()
    allow: tuple[_Entry, ...] = ()
    allow_policies: tuple[CompiledPolicy, ...] = ()
    """Enforced ALLOW policies, rules or not: their presence alone flips the default."""
    dry_deny: tuple[_Entry, ...] = ()
    dry_allow: tuple[_Entry, ...] = ()
    dry_allow_policies: tuple[CompiledPolicy, ...] = ()
    audit: tuple[_Entry, ...] = ()

    @classmethod
    def build(cls, policies: Sequence[CompiledPolicy]) -> _Bucket:
        def pick(action: Action, dry_run: bool) -> list[CompiledPolicy]:
            return [p for p in policies if p.action is action and p.dry_run is dry_run]

        allow, dry_allow = pick(Action.ALLOW, False), pick(Action.ALLOW, True)
        return cls(
            deny=_entries(pick(Action.DENY, False)),
            allow=_entries(allow),
            allow_policies=tuple(allow),
            dry_deny=_entries(pick(Action.DENY, True)),
            dry_allow=_entries(dry_allow),
            dry_allow_policies=tuple(dry_allow),
            audit=_entries(pick(Action.AUDIT, False)),
        )


_EMPTY = _Bucket()


@dataclass(frozen=True, slots=True)
class _Scoped:
    """The entries that apply to one scope, root and own namespace merged in name
    order: what ``evaluate`` walks, so a Check never re-tests selectors."""

    deny: tuple[_Entry, ...]
    allow: tuple[_Entry, ...]
    allow_applies: bool
    """An enforced ALLOW policy applies (rules or not): only a match allows."""
    dry_deny: tuple[_Entry, ...]
    dry_allow: tuple[_Entry, ...]
    dry_allow_applies: bool
    audit: tuple[_Entry, ...]
    checks_dry_run_or_audit: bool
    header_names: frozenset[str]
    """Every header a rule in scope can read (``CompiledRule.header_names``)."""

    @classmethod
    def build(cls, buckets: Sequence[_Bucket], scope: Scope) -> _Scoped:
        def entries(attr: str) -> tuple[_Entry, ...]:
            found = [e for b in buckets for e in getattr(b, attr) if e.policy.applies(scope)]
            return tuple(sorted(found, key=lambda e: e.name))

        def applies(attr: str) -> bool:
            return any(p.applies(scope) for b in buckets for p in getattr(b, attr))

        dry_deny, dry_allow, audit = entries("dry_deny"), entries("dry_allow"), entries("audit")
        deny, allow = entries("deny"), entries("allow")
        dry_allow_applies = applies("dry_allow_policies")
        return cls(
            deny=deny, allow=allow,
            allow_applies=applies("allow_policies"),
            dry_deny=dry_deny, dry_allow=dry_allow, dry_allow_applies=dry_allow_applies,
            audit=audit,
            checks_dry_run_or_audit=bool(dry_deny or dry_allow_applies or audit),
            header_names=frozenset().union(
                *(e.rule.header_names() for e in (*deny, *allow, *dry_deny, *dry_allow, *audit))),
        )


SCOPE_MEMO_SIZE = CacheSizes().scopes
"""Distinct scopes whose applicable entries are kept (``--scope-cache-size``).
Scopes come from route configuration and the identity Envoy runs as, so there
are few; past the bound the memo starts over rather than grow."""


def _first_match(entries: tuple[_Entry, ...], ctx: AuthzContext) -> str | None:
    for entry in entries:  # sorted by name: the first match is Envoy's effective policy
        if entry.rule.matches(ctx):
            return entry.name
    return None


class PolicySet:
    """All AuthorizationPolicies, compiled and indexed by namespace. Immutable."""

    __slots__ = ("_buckets", "_scoped", "custom", "not_attached", "policies", "root_namespace")

    def __init__(
        self,
        root_namespace: str,
        buckets: Mapping[str, _Bucket],
        policies: tuple[AuthorizationPolicy, ...],
        custom: tuple[AuthorizationPolicy, ...],
        not_attached: tuple[AuthorizationPolicy, ...],
        scope_cache_size: int = SCOPE_MEMO_SIZE,
    ) -> None:
        self.root_namespace = root_namespace
        self._buckets = buckets
        self.policies = policies
        """Every policy given, in input order."""
        self.custom = custom
        """CUSTOM policies: validated, never evaluated here (``CUSTOM_EXPLANATION``)."""
        self.not_attached = not_attached
        """targetRef(s) policies: attach only to gateway scopes (``TARGET_REF_EXPLANATION``)."""
        self._scoped: Memo[tuple[str, tuple[tuple[str, str], ...]], _Scoped] = (
            Memo(scope_cache_size))

    @classmethod
    def compile(
        cls,
        policies: Sequence[AuthorizationPolicy],
        root_namespace: str,
        trust_domain_aliases: Sequence[str] = (),
        scope_cache_size: int = SCOPE_MEMO_SIZE,
    ) -> PolicySet:
        """Compile everything now so ``evaluate`` only compares.

        ``trust_domain_aliases`` is Istio's trust-domain bundle: the mesh trust
        domain first, then its aliases. Empty (the default) disables the
        rewriting of B.9 and principals match as written.
        Raises ``PolicyErrors`` if two policies share a namespace and name.
        """
        bundle = tuple(dict.fromkeys(trust_domain_aliases))
        seen: dict[tuple[str, str], AuthorizationPolicy] = {}
        errors: list[PolicyError] = []
        by_ns: dict[str, list[CompiledPolicy]] = {}
        custom: list[AuthorizationPolicy] = []
        not_attached: list[AuthorizationPolicy] = []
        for policy in policies:
            key = (policy.namespace, policy.name)
            if key in seen:
                first = seen[key].location
                errors.append(PolicyError(
                    f"duplicate AuthorizationPolicy {policy.ref}"
                    + (f" (first defined at {first})" if first else ""),
                    policy.location, f"AuthorizationPolicy {policy.ref}",
                ))
                continue
            seen[key] = policy
            if policy.action is Action.CUSTOM:
                custom.append(policy)
                continue
            if policy.target_refs:
                not_attached.append(policy)  # attaches only to a gateway scope
            by_ns.setdefault(policy.namespace, []).append(compile_policy(policy, bundle))
        if errors:
            raise PolicyErrors(errors)
        buckets = MappingProxyType({ns: _Bucket.build(ps) for ns, ps in by_ns.items()})
        return cls(root_namespace, buckets, tuple(policies), tuple(custom), tuple(not_attached),
                   scope_cache_size)

    def _scope_buckets(self, namespace: str) -> tuple[_Bucket, ...]:
        root = self._buckets.get(self.root_namespace, _EMPTY)
        if namespace == self.root_namespace:
            return (root,)
        return (root, self._buckets.get(namespace, _EMPTY))

    def applicable(self, scope: Scope) -> tuple[AuthorizationPolicy, ...]:
        """The evaluated policies that apply to ``scope`` (for explanations)."""
        out: dict[str, AuthorizationPolicy] = {}
        for bucket in self._scope_buckets(scope.namespace):
            for entries in (bucket.deny, bucket.allow, bucket.dry_deny, bucket.dry_allow,
                            bucket.audit):
                for e in entries:
                    if e.policy.applies(scope):
                        out.setdefault(e.policy.policy.ref, e.policy.policy)
            for p in (*bucket.allow_policies, *bucket.dry_allow_policies):
                if p.applies(scope):
                    out.setdefault(p.policy.ref, p.policy)
        return tuple(out.values())

    def scoped(self, scope: Scope) -> _Scoped:
        found = self._scoped.get(scope.key)
        if found is None:
            found = self._scoped.put(
                scope.key, _Scoped.build(self._scope_buckets(scope.namespace), scope))
        return found

    def header_names(self, scope: Scope) -> frozenset[str]:
        """The headers whose values can change a decision in ``scope``."""
        return self.scoped(scope).header_names

    def evaluate(self, ctx: AuthzContext) -> AuthzResult:
        s = self.scoped(ctx.view.scope)
        dry_run: tuple[str, ...] = ()
        audit: tuple[str, ...] = ()
        if s.checks_dry_run_or_audit:
            dry_run, audit = self._dry_run(s, ctx), self._audit(s, ctx)
        denied_by = _first_match(s.deny, ctx) if s.deny else None
        if denied_by is not None:
            return AuthzResult(False, denied_by, DENIED_BY_DENY_POLICY, dry_run, audit)
        if s.allow_applies:
            allowed_by = _first_match(s.allow, ctx)
            if allowed_by is None:
                return AuthzResult(False, None, NO_ALLOW_POLICY_MATCHED, dry_run, audit)
            return AuthzResult(True, allowed_by, ALLOWED, dry_run, audit)
        if s.deny:
            return AuthzResult(True, None, ALLOWED, dry_run, audit)
        return AuthzResult(True, None, NO_POLICY, dry_run, audit)

    def _dry_run(self, s: _Scoped, ctx: AuthzContext) -> tuple[str, ...]:
        out: list[str] = []
        would_deny = _first_match(s.dry_deny, ctx)
        if would_deny is not None:
            out.append(f"deny {would_deny}")
        if s.dry_allow_applies:
            would_allow = _first_match(s.dry_allow, ctx)
            out.append(f"allow {would_allow}" if would_allow else f"deny {NO_ALLOW_POLICY_MATCHED}")
        return tuple(out)

    def _audit(self, s: _Scoped, ctx: AuthzContext) -> tuple[str, ...]:
        matched: dict[int, str] = {}
        for entry in s.audit:
            key = id(entry.policy)
            if key not in matched and entry.rule.matches(ctx):
                matched[key] = entry.name
        return tuple(sorted(matched.values()))
