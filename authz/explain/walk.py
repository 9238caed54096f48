"""The explanation walk: every step of one decision, in the order a reader checks it.

It reads what the snapshot compiled (jwtRules in scope, token locations, rules in
Envoy's name order) and asks each compiled check again, field by field, to say
which field decided a rule's match. The decision itself is the engine's own
(``Snapshot.evaluate``): the walk never decides differently, it only tells why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from authz.authn.engine import AuthnFailure
from authz.authn.extract import Extractor, RequestParts
from authz.authn.keys import KeySet, parse_jwks
from authz.authn.verify import (
    JwtError,
    Status,
    audience_allowed,
    check_time,
    parse_token,
    sanitize_audience,
    verify_signature,
)
from authz.decision import Decision
from authz.pipeline.snapshot import Snapshot
from authz.policy.authorization import (
    Action,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
)
from authz.policy.errors import Location
from authz.policy.load import Resource
from authz.policy.request_authentication import JwtRule
from authz.rbac.context import AuthzContext, RequestAuth
from authz.rbac.rules import (
    AllOf,
    Check,
    ClaimCheck,
    CompiledRule,
    IpCheck,
    PortCheck,
    RequestPrincipalCheck,
    StringCheck,
)
from authz.request.address import original_client_ip
from authz.request.view import RequestView

__all__ = [
    "RULE_NAME", "Explanation", "FieldResult", "JwtRuleReport", "Locator", "PolicyReport",
    "ResourceLocator", "RuleReport", "TokenReport", "explain",
]

Locator = Callable[[str, str], Location | None]
"""(``Kind ns/name``, field path like ``spec.rules[1]``) -> where it is written."""
RULE_NAME = re.compile(r"ns\[(?P<ns>[^\]]*)\]-policy\[(?P<name>[^\]]*)\]-rule\[(?P<i>\d+)\]")
"""Istio's RBAC rule name, as ``Decision.policy`` carries it."""


class ResourceLocator:
    """A ``Locator`` over loaded resources: the line of any field of any policy (only
    tools that loaded the files have it; the snapshot keeps no specs)."""

    def __init__(self, resources: Iterable[Resource]) -> None:
        self._by_ref = {r.ref: r for r in resources}

    def __call__(self, ref: str, path: str) -> Location | None:
        res = self._by_ref.get(ref)
        if res is None:
            return None
        return res.where(path) if path else res.location

    def rule(self, rule_name: str | None) -> Location | None:
        """Where ``ns[..]-policy[..]-rule[i]`` is written."""
        m = RULE_NAME.fullmatch(rule_name or "")
        if m is None:
            return None
        return self(f"AuthorizationPolicy {m['ns']}/{m['name']}", f"spec.rules[{m['i']}]")


@dataclass(frozen=True, slots=True)
class FieldResult:
    """One field of one rule, asked of the request."""

    path: str
    """``to[0].operation.paths``, ``from[0].source.notRequestPrincipals``, ``when[1]``."""
    patterns: tuple[str, ...]
    actual: str
    """What the request had, ``(absent)`` when it had nothing."""
    matched: bool
    """Whether a pattern matched the request's value."""
    held: bool
    """Whether the field is satisfied (a ``not`` field holds when nothing matched)."""

    def __str__(self) -> str:
        verb = "matched" if self.matched else "did not match"
        patterns = (json.dumps(self.patterns[0]) if len(self.patterns) == 1
                    else json.dumps(list(self.patterns)))
        text = f"{self.path}: {patterns} {verb} {self.actual}"
        if self.held is self.matched:
            return text
        return text + (" (so it holds)" if self.held else " (so it fails)")

    def to_json(self) -> dict[str, Any]:
        return {"field": self.path, "patterns": list(self.patterns), "actual": self.actual,
                "matched": self.matched, "held": self.held, "text": str(self)}


@dataclass(frozen=True, slots=True)
class RuleReport:
    name: str
    """``ns[<ns>]-policy[<name>]-rule[<i>]``."""
    index: int
    matched: bool
    evaluated: bool
    """Whether the engine itself reached this rule (it stops at the first match of
    each action), as opposed to being walked only for this explanation."""
    decided_by: str
    """The field that decided the match: the first that failed (in the engine's order:
    ``when``, then ``from``, then ``to``), or for a match the last field that held."""
    fields: tuple[FieldResult, ...]
    location: Location | None

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.name, "index": self.index, "matched": self.matched,
                "evaluated": self.evaluated, "decided_by": self.decided_by,
                "location": str(self.location) if self.location else None,
                "fields": [f.to_json() for f in self.fields]}


@dataclass(frozen=True, slots=True)
class PolicyReport:
    ref: str
    action: str
    dry_run: bool
    location: Location | None
    rules: tuple[RuleReport, ...]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.ref, "action": self.action, "dry_run": self.dry_run,
                "location": str(self.location) if self.location else None,
                "note": self.note or None, "rules": [r.to_json() for r in self.rules]}


@dataclass(frozen=True, slots=True)
class TokenReport:
    location: str
    """Where it was found, e.g. ``header authorization (prefix 'Bearer ')``."""
    status: str
    """jwt_verify_lib's status for this rule: ``OK``, ``Jwt is expired``..."""
    principal: str = ""

    @property
    def ok(self) -> bool:
        return self.status == Status.OK.value

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "status": self.status,
                "principal": self.principal or None}


@dataclass(frozen=True, slots=True)
class JwtRuleReport:
    source: str
    """``RequestAuthentication ns/name jwtRules[i]``."""
    issuer: str
    locations: tuple[str, ...]
    required: bool
    tokens: tuple[TokenReport, ...]
    location: Location | None

    @property
    def verified(self) -> bool:
        return any(t.ok for t in self.tokens)

    @property
    def rejected(self) -> bool:
        """A token this rule's issuer signed (or claims to) failed here."""
        return any(not t.ok and t.status != Status.JWT_UNKNOWN_ISSUER.value
                   for t in self.tokens)

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.source, "issuer": self.issuer, "locations": list(self.locations),
                "presence": "REQUIRED" if self.required else "OPTIONAL",
                "location": str(self.location) if self.location else None,
                "tokens": [t.to_json() for t in self.tokens]}


@dataclass(frozen=True, slots=True)
class Explanation:
    scope: str
    request: str
    jwt_rules: tuple[JwtRuleReport, ...]
    authentication: str
    """The outcome of authentication in one line."""
    policies: tuple[PolicyReport, ...]
    decision: Decision
    why: str
    authorized: bool = field(default=True)
    """False when authentication failed, so no policy was evaluated."""

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "request": self.request, "scope": self.scope,
            "authentication": {"result": self.authentication,
                               "rules": [r.to_json() for r in self.jwt_rules]},
            "authorization": {"evaluated": self.authorized,
                              "policies": [p.to_json() for p in self.policies]},
            "decision": {"decision": "allow" if d.allowed else "deny", "status": d.status,
                         "reason": d.reason.value, "policy": d.policy, "why": self.why},
        }

    def text(self) -> str:
        out = [f"request: {self.request}", f"scope:   {self.scope}", "authentication:"]
        if not self.jwt_rules:
            out.append("  no RequestAuthentication applies to this scope")
        for r in self.jwt_rules:
            where = f" ({r.location})" if r.location else ""
            out.append(f"  {r.source}{where}: issuer {r.issuer}, "
                       f"{'REQUIRED' if r.required else 'optional'}, "
                       f"looks in {'; '.join(r.locations)}")
            if not r.tokens:
                out.append("    no token at its locations")
            for t in r.tokens:
                who = f" ({t.principal})" if t.principal else ""
                out.append(f"    token at {t.location}: {t.status}{who}")
        out.append(f"  => {self.authentication}")
        out.append("authorization:")
        if not self.authorized:
            out.append("  not evaluated: authentication failed")
        elif not self.policies:
            out.append("  no AuthorizationPolicy applies to this scope")
        for p in self.policies:
            mode = " (dry-run)" if p.dry_run else ""
            where = f" ({p.location})" if p.location else ""
            out.append(f"  {p.action}{mode} {p.ref}{where}")
            if p.note:
                out.append(f"    {p.note}")
            for rule in p.rules:
                state = "MATCHED" if rule.matched else "no match"
                skipped = "" if rule.evaluated else " [not reached by the engine]"
                where = f" ({rule.location})" if rule.location else ""
                out.append(f"    rule[{rule.index}]{where}: {state}{skipped}: {rule.decided_by}")
        d = self.decision
        out.append(f"decision: {'ALLOW' if d.allowed else 'DENY'} {d.status}: {self.why}")
        return "\n".join(out)


# --- authentication ---------------------------------------------------------------


def _keys(snapshot: Snapshot, rule: JwtRule) -> KeySet | None:
    if rule.jwks:
        return parse_jwks(rule.jwks)
    provider = snapshot.authenticator.keys
    return provider.keys_for(rule) if provider is not None else None


def _token_status(snapshot: Snapshot, rule: JwtRule, token: str, now: float
                  ) -> tuple[Status, str]:
    """jwt_verify_lib's checks in its order, for this rule alone (issuer, time,
    audience, then the signature with the rule's keys)."""
    try:
        signed = parse_token(token, snapshot.authenticator.max_token_bytes)
    except JwtError as exc:
        return exc.status, ""
    jwt = signed.jwt
    principal = f"{jwt.iss}/{jwt.sub}"
    if jwt.iss != rule.issuer:
        return Status.JWT_UNKNOWN_ISSUER, principal
    status = check_time(jwt, now, snapshot.authenticator.clock_skew)
    if status is not Status.OK:
        return status, principal
    if not audience_allowed(jwt, frozenset(sanitize_audience(a) for a in rule.audiences)):
        return Status.JWT_AUDIENCE_NOT_ALLOWED, principal
    keys = _keys(snapshot, rule)
    if keys is None:
        return Status.JWKS_FETCH_FAIL, principal
    return verify_signature(signed, keys)[0], principal


def _jwt_rules(snapshot: Snapshot, view: RequestView, now: float, locate: Locator | None
               ) -> tuple[JwtRuleReport, ...]:
    parts = RequestParts(view.headers, view.query)
    out: list[JwtRuleReport] = []
    for rule in snapshot.authenticator.rules_for(view.scope):
        extractor = Extractor((rule,))
        places = [str(loc) for loc, _ in (*extractor.headers, *extractor.params,
                                          *extractor.cookies)]
        tokens = []
        for tok in extractor.extract(parts):
            status, principal = _token_status(snapshot, rule, tok.token, now)
            tokens.append(TokenReport(str(tok.location), status.value,
                                      principal if status is Status.OK else ""))
        out.append(JwtRuleReport(rule.source, rule.issuer, tuple(places),
                                 rule.presence.value == "REQUIRED", tuple(tokens),
                                 _locate_jwt_rule(rule, locate)))
    return tuple(out)


def _locate_jwt_rule(rule: JwtRule, locate: Locator | None) -> Location | None:
    # rule.source is "RequestAuthentication ns/name jwtRules[i]"
    head, _, index = rule.source.rpartition(" ")
    if locate is None or not head:
        return None
    return locate(head, f"spec.{index}")


# --- authorization ----------------------------------------------------------------


def _camel(label: str) -> str:
    """``not requestPrincipals`` -> ``notRequestPrincipals``."""
    if label.startswith("not "):
        name = label[4:]
        return "not" + name[:1].upper() + name[1:]
    return label


def _show(value: Any) -> str:
    if value is None or value == "":
        return "(absent)"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return json.dumps([str(v) for v in value])
    return json.dumps(str(value))


def _actual(check: Check, ctx: AuthzContext) -> str:
    if isinstance(check, StringCheck):
        return _show(check.read(ctx))
    if isinstance(check, IpCheck):
        return _show(check.read(ctx))
    if isinstance(check, PortCheck):
        return _show(ctx.view.destination.port)
    if isinstance(check, RequestPrincipalCheck):
        claims = ctx.claims
        if claims is None:
            return "(no verified token)"
        return _show(f"{claims.get('iss')}/{claims.get('sub')}")
    if isinstance(check, ClaimCheck):
        if ctx.claims is None:
            return "(no verified token)"
        return _show(check.claim.lookup(ctx.claims))
    return "(unknown)"


def _field(path: str, patterns: Sequence[str], check: Check, ctx: AuthzContext) -> FieldResult:
    held = check(ctx)
    negate = bool(getattr(check, "negate", False))
    return FieldResult(path, tuple(patterns), _actual(check, ctx), held is not negate, held)


def _group_fields(prefix: str, group: AllOf, model: Source | Operation,
                  ctx: AuthzContext) -> list[FieldResult]:
    out = []
    for check in group.checks:
        name = _camel(check.label)
        attr = "".join("_" + c.lower() if c.isupper() else c for c in name)
        out.append(_field(f"{prefix}.{name}", getattr(model, attr, ()), check, ctx))
    return out


def _condition_fields(when: Sequence[Condition], checks: Sequence[Check], ctx: AuthzContext
                      ) -> list[FieldResult]:
    out = []
    it = iter(checks)
    for i, cond in enumerate(when):
        if cond.values:
            out.append(_field(f"when[{i}] {cond.key} values", cond.values, next(it), ctx))
        if cond.not_values:
            out.append(_field(f"when[{i}] {cond.key} notValues", cond.not_values, next(it), ctx))
    return out


def _rule(index: int, model: Rule, compiled: CompiledRule, ctx: AuthzContext, evaluated: bool,
          location: Location | None) -> RuleReport:
    fields: list[FieldResult] = []
    decided = ""
    when = _condition_fields(model.when, compiled.conditions, ctx)
    fields.extend(when)
    failed = next((f for f in when if not f.held), None)
    if failed is not None:
        decided = str(failed)

    def groups(kind: str, sub: str, compiled_groups: tuple[AllOf, ...] | None,
               models: Sequence[Source | Operation] | None) -> str:
        """Every group's fields; the reason the list failed (its first group's first
        failing field), or "" when some group held."""
        if compiled_groups is None or models is None:
            return ""
        first_failure = ""
        for i, (group, m) in enumerate(zip(compiled_groups, models, strict=True)):
            results = _group_fields(f"{kind}[{i}].{sub}", group, m, ctx)
            fields.extend(results)
            bad = next((f for f in results if not f.held), None)
            if bad is None:
                return ""
            if not first_failure:
                first_failure = str(bad)
        return first_failure

    from_failure = groups("from", "source", compiled.sources, model.from_)
    to_failure = groups("to", "operation", compiled.operations, model.to)
    matched = compiled.matches(ctx)
    if not decided:
        decided = from_failure or to_failure
    if matched:
        decided = str(fields[-1]) if fields else "no from, to or when: matches every request"
    elif not decided:
        decided = "did not match"
    return RuleReport(compiled.name, index, matched, evaluated, decided, tuple(fields), location)


def _first_matching(entries: Iterable[Any], ctx: AuthzContext) -> list[str]:
    """Names the engine evaluates: in name order up to and including the first match."""
    names = []
    for e in entries:
        names.append(e.name)
        if e.rule.matches(ctx):
            break
    return names


def _evaluated(snapshot: Snapshot, ctx: AuthzContext) -> set[str]:
    """The rules ``PolicySet.evaluate`` itself asks, in its order (DENY, then ALLOW
    only if no DENY matched; dry-run and AUDIT rules beside them)."""
    s = snapshot.authorization.scoped(ctx.view.scope)
    seen = set(_first_matching(s.deny, ctx))
    deny_matched = any(e.name in seen and e.rule.matches(ctx) for e in s.deny)
    if not deny_matched and s.allow_applies:
        seen.update(_first_matching(s.allow, ctx))
    if s.checks_dry_run_or_audit:
        seen.update(_first_matching(s.dry_deny, ctx))
        if s.dry_allow_applies:
            seen.update(_first_matching(s.dry_allow, ctx))
        seen.update(e.name for e in s.audit)
    return seen


def _policies(snapshot: Snapshot, ctx: AuthzContext, locate: Locator | None
              ) -> tuple[PolicyReport, ...]:
    scope = ctx.view.scope
    s = snapshot.authorization.scoped(scope)
    compiled: dict[str, CompiledRule] = {
        e.name: e.rule for e in (*s.deny, *s.allow, *s.dry_deny, *s.dry_allow, *s.audit)}
    evaluated = _evaluated(snapshot, ctx)
    order = {Action.DENY: 0, Action.ALLOW: 1, Action.AUDIT: 2}
    policies: Sequence[AuthorizationPolicy] = sorted(
        snapshot.authorization.applicable(scope),
        key=lambda p: (p.dry_run, order.get(p.action, 3), p.namespace, p.name))
    out = []
    for p in policies:
        ref = f"AuthorizationPolicy {p.ref}"
        rules = []
        for i, model in enumerate(p.rules):
            rule = compiled.get(p.rule_name(i))
            if rule is None:
                continue
            where = locate(ref, f"spec.rules[{i}]") if locate else None
            rules.append(_rule(i, model, rule, ctx, rule.name in evaluated,
                               where or p.location))
        note = "" if p.rules else (
            "no rules: matches nothing (an ALLOW policy then denies everything else)")
        location = (locate(ref, "") if locate else None) or p.location
        out.append(PolicyReport(p.ref, p.action.value, p.dry_run, location, tuple(rules), note))
    return tuple(out)


def _why(decision: Decision, authorized: bool) -> str:
    if not authorized:
        return f"authentication failed: {decision.body}" + (
            f" ({decision.detail})" if decision.detail else "")
    reason = decision.detail
    if reason == "no_policy":
        return "no AuthorizationPolicy applies to this scope: allowed, as Istio does"
    if reason == "denied_by_deny_policy":
        return f"DENY rule {decision.policy} matched"
    if reason == "no_allow_policy_matched":
        return "ALLOW policies apply to this scope and none of their rules matched"
    if decision.policy:
        return f"ALLOW rule {decision.policy} matched"
    return "no DENY rule matched and no ALLOW policy applies"


def explain(snapshot: Snapshot, view: RequestView, now: float,
            locate: Locator | None = None) -> Explanation:
    """Walk one request through ``snapshot`` the way its engines do; the decision is
    the one a ``Check`` gets (``Snapshot.evaluate``)."""
    decision = snapshot.evaluate(view, now)
    jwt_rules = _jwt_rules(snapshot, view, now, locate)
    authn = snapshot.authenticator.authenticate(view, now)
    authorized = not isinstance(authn, AuthnFailure)
    claims: Mapping[str, Any] | None = None if isinstance(authn, AuthnFailure) else authn.claims
    if not authorized:
        authentication = f"failed: {decision.status} {decision.body}"
    elif claims is None:
        authentication = "passed without a verified token (no token, or none required)"
    else:
        authentication = f"passed: verified token of {claims.get('iss')}/{claims.get('sub')}"
    policies: tuple[PolicyReport, ...] = ()
    if authorized:
        ctx = AuthzContext(view, RequestAuth(claims) if claims is not None else None,
                           original_client_ip(view, snapshot.options.xff_num_trusted_hops))
        policies = _policies(snapshot, ctx, locate)
    request = f"{view.method} {view.host}{view.original_path}"
    return Explanation(str(view.scope), request, jwt_rules, authentication, policies,
                       decision, _why(decision, authorized), authorized)

