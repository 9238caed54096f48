"""Which jwtRules apply to a scope: RequestAuthentications indexed for the request path.

Istio merges the rules of every RequestAuthentication in the root namespace and
the workload's own namespace whose selector (or targetRefs) attaches to the
workload, and stable-sorts them by issuer (reference A.1). The index is built per
snapshot; the request path reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from authz.policy.errors import PolicyError, PolicyErrors
from authz.policy.load import Resource
from authz.policy.request_authentication import (
    JwtRule,
    RequestAuthentication,
    is_request_authentication,
    parse_request_authentication,
)
from authz.request.scope import Scope

__all__ = ["RequestAuthnPolicies", "select_rules"]


def select_rules(
    policies: Iterable[RequestAuthentication], scope: Scope, root_namespace: str
) -> tuple[JwtRule, ...]:
    """The merged rules for one workload: concatenated, then stable-sorted by issuer (A.1)."""
    rules: list[JwtRule] = []
    for policy in policies:
        if policy.namespace not in (root_namespace, scope.namespace):
            continue
        if policy.attaches_to(scope):
            rules.extend(policy.rules)
    rules.sort(key=lambda r: r.issuer)
    return tuple(rules)


_MAX_CACHED_SCOPES = 4096


@dataclass(frozen=True, slots=True)
class _Bucket:
    policies: tuple[RequestAuthentication, ...]
    needs_labels: bool
    """False when no candidate has a selector: one answer for the whole namespace."""


@dataclass(slots=True)
class RequestAuthnPolicies:
    """All RequestAuthentications of one snapshot, indexed for the request path.

    Candidates are grouped per namespace once (root + that namespace, in input
    order, so the stable sort by issuer keeps file order for equal issuers);
    the merged tuple is memoized per scope, so a request does only dict reads.
    """

    policies: tuple[RequestAuthentication, ...]
    root_namespace: str = "istio-system"
    _buckets: dict[str, _Bucket] = field(default_factory=dict, repr=False)
    _memo: dict[tuple[str, frozenset[tuple[str, str]]], tuple[JwtRule, ...]] = field(
        default_factory=dict, repr=False)

    @classmethod
    def from_resources(
        cls, resources: Iterable[Resource], root_namespace: str = "istio-system"
    ) -> RequestAuthnPolicies:
        """Parse every RequestAuthentication; raise ``PolicyErrors`` listing all problems."""
        parsed: list[RequestAuthentication] = []
        errors: list[PolicyError] = []
        for res in resources:
            if not is_request_authentication(res):
                continue
            try:
                parsed.append(parse_request_authentication(res))
            except PolicyErrors as exc:
                errors.extend(exc.errors)
        if errors:
            raise PolicyErrors(errors)
        return cls(tuple(parsed), root_namespace)

    @property
    def all_rules(self) -> tuple[JwtRule, ...]:
        """Every rule that can apply to some scope: what the JWKS manager must fetch."""
        return tuple(r for p in self.policies for r in p.rules)

    def rules_for(self, scope: Scope) -> tuple[JwtRule, ...]:
        bucket = self._buckets.get(scope.namespace)
        if bucket is None:
            candidates = tuple(p for p in self.policies if p.rules
                               and p.namespace in (self.root_namespace, scope.namespace))
            bucket = _Bucket(candidates, any(p.selector or p.target_refs for p in candidates))
            if len(self._buckets) >= _MAX_CACHED_SCOPES:
                self._buckets.clear()
            self._buckets[scope.namespace] = bucket
        if not bucket.policies:
            return ()
        labels = frozenset(scope.labels.items()) if bucket.needs_labels else frozenset()
        key = (scope.namespace, labels)
        found = self._memo.get(key)
        if found is None:
            found = select_rules(bucket.policies, scope, self.root_namespace)
            if len(self._memo) >= _MAX_CACHED_SCOPES:
                self._memo.clear()
            self._memo[key] = found
        return found
