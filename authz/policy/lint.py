"""Warnings for policies that are valid Istio but probably not what was meant."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields

from authz.policy.authorization import (
    CUSTOM_EXPLANATION,
    TARGET_REF_EXPLANATION,
    Action,
    Attribute,
    AuthorizationPolicy,
    Operation,
    Source,
)
from authz.policy.errors import Location

__all__ = ["PolicyWarning", "lint_authorization"]

_JWT_ATTRIBUTES = frozenset({
    Attribute.REQUEST_PRINCIPAL, Attribute.REQUEST_AUDIENCES,
    Attribute.REQUEST_PRESENTER, Attribute.REQUEST_CLAIMS,
})


@dataclass(frozen=True, slots=True)
class PolicyWarning:
    location: Location | None
    resource: str
    message: str

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.resource}: warning: {self.message}"


def _uses_jwt(policy: AuthorizationPolicy) -> bool:
    for rule in policy.rules:
        if any(s.request_principals or s.not_request_principals for s in rule.from_ or ()):
            return True
        if any(c.attribute in _JWT_ATTRIBUTES for c in rule.when):
            return True
    return False


def _contradictions(item: Source | Operation) -> Iterator[str]:
    """``methods: [GET]`` with ``notMethods: [GET]``: that entry can never match."""
    for f in fields(item):
        if f.name.startswith("not_"):
            continue
        positive = set(getattr(item, f.name))
        negative = set(getattr(item, "not_" + f.name, ()))
        for value in sorted(positive & negative):
            yield f"{f.name} and not_{f.name} both list {value!r}"


def lint_authorization(
    policies: Iterable[AuthorizationPolicy], jwt_namespaces: frozenset[str], root_namespace: str
) -> list[PolicyWarning]:
    """``jwt_namespaces``: namespaces with at least one RequestAuthentication."""
    out: list[PolicyWarning] = []
    for p in policies:
        ref = f"AuthorizationPolicy {p.ref}"

        def warn(message: str, policy: AuthorizationPolicy = p, ref: str = ref) -> None:
            out.append(PolicyWarning(policy.location, ref, message))

        if p.action is Action.CUSTOM:
            warn(CUSTOM_EXPLANATION)
            continue
        if p.target_refs:
            warn(TARGET_REF_EXPLANATION)
            continue
        if p.action is Action.ALLOW and not p.rules and not p.dry_run:
            warn("an ALLOW policy without rules matches nothing, so it denies every request "
                 "in its scope (write rules: [{}] to allow everything)")
        if p.action is Action.DENY and any(
            r.from_ is None and r.to is None and not r.when for r in p.rules
        ):
            warn("a DENY rule with no from, to or when denies every request in its scope")
        if _uses_jwt(p) and not ({p.namespace, root_namespace} & jwt_namespaces):
            warn("uses requestPrincipals or request.auth.* but no RequestAuthentication is in "
                 "its namespace or the root namespace: no request will carry a principal")
        for i, rule in enumerate(p.rules):
            items: tuple[Source | Operation, ...] = (*(rule.from_ or ()), *(rule.to or ()))
            for item in items:
                for problem in _contradictions(item):
                    warn(f"rule[{i}]: {problem}: that entry can never match")
            for cond in rule.when:
                for value in sorted(set(cond.values) & set(cond.not_values)):
                    warn(f"rule[{i}]: when {cond.key} lists {value!r} in values and notValues: "
                         "it can never match")
    return out
