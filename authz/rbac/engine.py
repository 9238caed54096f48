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

from authz.policy.authorization import Action, AuthorizationPolicy
from authz.policy.errors import PolicyError, PolicyErrors
from authz.rbac.context import AuthzContext
from authz.rbac.rules import CompiledPolicy, CompiledRule, compile_policy
from authz.scope import Scope

NO_POLICY = "no_policy"
ALLOWED = "allowed"
DENIED_BY_DENY_POLICY = "denied_by_deny_policy"
NO_ALLOW_POLICY_MATCHED = "no_allow_policy_matched"

CUSTOM_EXPLANATION = (
    "this server is the CUSTOM provider; CUSTOM policies configure Envoy (when to call "
    "this server), not this server"
)
TARGET_REF_EXPLANATION = (
    "targetRef/targetRefs policies attach only to a Gateway-API gateway scope: routes whose "
    "labels include gateway.networking.k8s.io/gateway-name=<Gateway name>, in the policy's "
    "namespace; sidecar-style scopes never get them"
)


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


def _first(buckets: Sequence[_Bucket], attr: str, ctx: AuthzContext) -> str | None:
    """The smallest matching rule name over the buckets' ``attr`` entries."""
    scope = ctx.view.scope
    best: str | None = None
    for bucket in buckets:
        entries: tuple[_Entry, ...] = getattr(bucket, attr)
        for entry in entries:
            if best is not None and entry.name >= best:
                break
            if entry.policy.applies(scope) and entry.rule.matches(ctx):
                best = entry.name
                break
    return best


def _any_applies(policies: Iterable[CompiledPolicy], scope: Scope) -> bool:
    return any(p.applies(scope) for p in policies)


class PolicySet:
    """All AuthorizationPolicies, compiled and indexed by namespace. Immutable."""

    __slots__ = ("_buckets", "custom", "not_attached", "policies", "root_namespace")

    def __init__(
        self,
        root_namespace: str,
        buckets: Mapping[str, _Bucket],
        policies: tuple[AuthorizationPolicy, ...],
        custom: tuple[AuthorizationPolicy, ...],
        not_attached: tuple[AuthorizationPolicy, ...],
    ) -> None:
        self.root_namespace = root_namespace
        self._buckets = buckets
        self.policies = policies
        """Every policy given, in input order."""
        self.custom = custom
        """CUSTOM policies: validated, never evaluated here (``CUSTOM_EXPLANATION``)."""
        self.not_attached = not_attached
        """targetRef(s) policies: attach only to gateway scopes (``TARGET_REF_EXPLANATION``)."""

    @classmethod
    def compile(
        cls,
        policies: Sequence[AuthorizationPolicy],
        root_namespace: str,
        trust_domain_aliases: Sequence[str] = (),
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
        return cls(root_namespace, buckets, tuple(policies), tuple(custom), tuple(not_attached))

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

    def evaluate(self, ctx: AuthzContext) -> AuthzResult:
        scope = ctx.view.scope
        buckets = self._scope_buckets(scope.namespace)
        dry_run = self._dry_run(buckets, ctx)
        audit = self._audit(buckets, ctx)

        denied_by = _first(buckets, "deny", ctx)
        if denied_by is not None:
            return AuthzResult(False, denied_by, DENIED_BY_DENY_POLICY, dry_run, audit)
        if any(_any_applies(b.allow_policies, scope) for b in buckets):
            allowed_by = _first(buckets, "allow", ctx)
            if allowed_by is None:
                return AuthzResult(False, None, NO_ALLOW_POLICY_MATCHED, dry_run, audit)
            return AuthzResult(True, allowed_by, ALLOWED, dry_run, audit)
        if any(_any_applies(_deny_policies(b), scope) for b in buckets):
            return AuthzResult(True, None, ALLOWED, dry_run, audit)
        return AuthzResult(True, None, NO_POLICY, dry_run, audit)

    def _dry_run(self, buckets: Sequence[_Bucket], ctx: AuthzContext) -> tuple[str, ...]:
        out: list[str] = []
        would_deny = _first(buckets, "dry_deny", ctx)
        if would_deny is not None:
            out.append(f"deny {would_deny}")
        if any(_any_applies(b.dry_allow_policies, ctx.view.scope) for b in buckets):
            would_allow = _first(buckets, "dry_allow", ctx)
            out.append(f"allow {would_allow}" if would_allow else f"deny {NO_ALLOW_POLICY_MATCHED}")
        return tuple(out)

    def _audit(self, buckets: Sequence[_Bucket], ctx: AuthzContext) -> tuple[str, ...]:
        scope = ctx.view.scope
        matched: dict[int, str] = {}
        for bucket in buckets:
            for entry in bucket.audit:
                key = id(entry.policy)
                if key not in matched and entry.policy.applies(scope) and entry.rule.matches(ctx):
                    matched[key] = entry.name
        return tuple(sorted(matched.values()))


def _deny_policies(bucket: _Bucket) -> Iterable[CompiledPolicy]:
    return (e.policy for e in bucket.deny)
