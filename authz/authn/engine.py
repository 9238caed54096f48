"""RequestAuthentication on the request path: pure, synchronous, no I/O.

The merged rules of a scope become Envoy ``JwtProvider``s, and the request is
judged by the same requirement Istio builds (reference A.6):

- one rule: ``requires_any[provider, allow_missing]``;
- N rules: ``requires_any[p0, .., pN-1, requires_all[requires_any[pi, allow_missing]..]]``:
  pass if some provider fully verifies the tokens at its own locations, or if
  every provider finds no token at its locations or verifies what it finds;
- a rule with ``presence: REQUIRED`` drops its ``allow_missing`` (so no token
  at its locations is ``Jwt is missing``).

Inside one provider every token found at its locations must verify, checked
from the last found to the first, the first failure winning (``authenticator.cc``).
On top of the requirement, any token found at any location in scope that no
declaring provider accepts fails the request (reference A.3 "any invalid
extracted token -> 401"), so a good token cannot carry a bad one past us.

Key sets are read from the JWKS manager with plain dict reads; an unknown
``kid`` asks the manager for a rate-limited refetch and is answered from the
keys at hand.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from authz.authn.cache import TokenCache, token_digest
from authz.authn.extract import (
    ExtractedToken,
    Extractor,
    LocationKind,
    RequestParts,
    TokenLocation,
)
from authz.authn.keys import KeySet, parse_jwks
from authz.authn.selection import RequestAuthnPolicies
from authz.authn.verify import (
    CLOCK_SKEW_SECONDS,
    MAX_TOKEN_BYTES,
    Jwt,
    JwtError,
    Status,
    audience_allowed,
    check_time,
    parse_token,
    sanitize_audience,
    time_horizon,
    verify_signature,
)
from authz.decision import Header, Reason
from authz.errors import AuthzError
from authz.memo import CacheSizes, IdentityMemo
from authz.policy.request_authentication import JwtRule, Presence
from authz.request.scope import Scope
from authz.request.view import RequestView

__all__ = [
    "AUTHN_HEADERS", "Authenticator", "AuthnFailure", "AuthnSuccess", "KeyProvider", "StaticKeys",
    "aggregate", "all_of", "any_of", "claim_value", "is_cors_preflight", "normalize_claims",
    "realm", "www_authenticate",
]

METADATA_PAYLOAD_KEY = "payload"
"""Istio sets ``payload_in_metadata: payload`` (reference A.2)."""
MAX_REALM_PATH = 256
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class KeyProvider(Protocol):
    """Live key sets for remote rules (``JwksManager`` implements it)."""

    def keys_for(self, rule: JwtRule) -> KeySet | None:
        """The current set, or None if none was ever fetched. Must not block."""
        ...

    def request_refetch(self, rule: JwtRule) -> None:
        """Ask for an early refetch (unknown kid). Fire and forget; must not block."""
        ...

    @property
    def generation(self) -> object:
        """An object replaced (a new identity) whenever any key set changes: what a
        remembered decision checks to know the keys it was made with still hold."""
        ...


@dataclass(frozen=True, slots=True)
class StaticKeys:
    """A fixed ``KeyProvider``: key sets by JWKS URI, or by issuer for discovery rules."""

    by_uri: Mapping[str, KeySet] = field(default_factory=dict)
    by_issuer: Mapping[str, KeySet] = field(default_factory=dict)

    def keys_for(self, rule: JwtRule) -> KeySet | None:
        if rule.jwks_uri:
            return self.by_uri.get(rule.jwks_uri)
        return self.by_issuer.get(rule.issuer)

    def request_refetch(self, rule: JwtRule) -> None:
        """Nothing to refetch: the sets are fixed."""

    @property
    def generation(self) -> object:
        return self


class AuthnSuccess(NamedTuple):
    """What a request that passed authentication gets (a named tuple: see ``Decision``)."""

    claims: Mapping[str, Any] | None
    """Verified payload (space-delimited claims split into lists); None without a token."""
    upstream_headers: tuple[Header, ...] = ()
    upstream_headers_to_remove: tuple[str, ...] = ()
    """Never names a header in ``upstream_headers``: safe in any application order."""
    query_parameters_to_remove: tuple[str, ...] = ()
    dynamic_metadata: Mapping[str, Any] = _EMPTY
    """``{"payload": claims}``, Envoy jwt_authn's metadata shape under Istio."""
    principal: str | None = None
    """``iss/sub`` of the token whose payload is ``claims`` (for logs)."""


NO_TOKEN = AuthnSuccess(claims=None)
"""No rule in scope: nothing to verify, nothing to add (one shared, immutable value)."""


@dataclass(frozen=True, slots=True)
class AuthnFailure:
    status: int
    body: str
    www_authenticate: str
    reason: str
    detail: str = ""
    """Which rule and location failed; never the token."""


AuthnResult = AuthnSuccess | AuthnFailure


@dataclass(frozen=True, slots=True)
class _Provider:
    index: int
    rule: JwtRule
    rule_id: int
    extractor: Extractor
    locations: frozenset[TokenLocation]
    audiences: frozenset[str]
    spaced: frozenset[str]
    inline_keys: KeySet | None

    @property
    def required(self) -> bool:
        return self.rule.presence is Presence.REQUIRED


@dataclass(frozen=True, slots=True)
class _Plan:
    providers: tuple[_Provider, ...]
    union: Extractor
    output_headers: tuple[str, ...]
    serial: int
    """Unique for the process's life: memo keys name a plan without holding it."""


_plan_serials = itertools.count()


@dataclass(slots=True)
class _Good:
    provider: _Provider
    token: ExtractedToken
    jwt: Jwt


class _Run:
    """One request's evaluation: extraction and verification memoized."""

    __slots__ = ("auth", "failures", "goods", "now", "parts", "seen_goods", "tokens", "until",
                 "verdicts")

    def __init__(self, auth: Authenticator, parts: RequestParts, now: float) -> None:
        self.auth = auth
        self.parts = parts
        self.now = now
        self.tokens: dict[int, tuple[ExtractedToken, ...]] = {}
        self.verdicts: dict[tuple[int, str], tuple[Status, Jwt | None]] = {}
        self.goods: list[_Good] = []
        self.seen_goods: set[tuple[int, str, TokenLocation]] = set()
        self.failures: list[tuple[_Provider, ExtractedToken, Status]] = []
        self.until = math.inf
        """When the time checks of the tokens read so far can first answer differently."""

    def tokens_for(self, p: _Provider) -> tuple[ExtractedToken, ...]:
        found = self.tokens.get(p.index)
        if found is None:
            found = p.extractor.extract(self.parts)
            self.tokens[p.index] = found
        return found

    def verify(self, p: _Provider, tok: ExtractedToken) -> tuple[Status, Jwt | None]:
        key = (p.index, tok.token)
        verdict = self.verdicts.get(key)
        if verdict is None:
            status, jwt, until = self.auth._verify(p, tok.token, self.now)
            verdict = self.verdicts[key] = (status, jwt)
            if until < self.until:
                self.until = until
        return verdict

    def branch(self, p: _Provider, allow_missing: bool) -> Status:
        tokens = self.tokens_for(p)
        if not tokens:
            return Status.OK if allow_missing else Status.JWT_MISSED
        for tok in reversed(tokens):
            status, jwt = self.verify(p, tok)
            if status is not Status.OK or jwt is None:
                self.failures.append((p, tok, status))
                return status
            mark = (p.index, tok.token, tok.location)
            if mark not in self.seen_goods:
                self.seen_goods.add(mark)
                self.goods.append(_Good(p, tok, jwt))
        return Status.OK

    def optional(self, p: _Provider) -> Status:
        """``requires_any`` of [p, allow_missing] for an optional rule, as ``any_of``
        evaluates it, without building two closures per request."""
        status = self.branch(p, False)
        if p.required or status is Status.OK:
            return status
        missing_ok = self.branch(p, True)
        return missing_ok if missing_ok is Status.OK else aggregate((status, missing_ok))


def any_of(children: Sequence[Callable[[], Status]]) -> Status:
    """``requires_any``: first OK wins; else the last real failure.

    ``Jwt is missing`` and ``Jwt issuer is not configured`` only say a branch
    had nothing of its own; a real failure (expired, bad signature, audience)
    from another branch is the more useful answer, as Envoy reports it.
    """
    statuses: list[Status] = []
    for child in children:
        status = child()
        if status is Status.OK:
            return status
        statuses.append(status)
    return aggregate(statuses)


def aggregate(statuses: Sequence[Status]) -> Status:
    final = Status.JWT_MISSED
    for status in statuses:
        if status is Status.JWT_UNKNOWN_ISSUER and final is Status.JWT_MISSED:
            final = status
    for status in statuses:
        if status not in (Status.JWT_MISSED, Status.JWT_UNKNOWN_ISSUER):
            final = status
    return final


def all_of(children: Sequence[Callable[[], Status]]) -> Status:
    for child in children:
        status = child()
        if status is not Status.OK:
            return status
    return Status.OK


AUTHN_HEADERS = frozenset({"origin", "access-control-request-method", "x-forwarded-proto"})
"""Headers authentication reads besides token places: a CORS preflight's and the realm's."""


def is_cors_preflight(view: RequestView) -> bool:
    """Envoy's ``bypass_cors_preflight``: OPTIONS with Origin and Access-Control-Request-Method."""
    return (view.method == "OPTIONS" and bool(view.headers.get("origin"))
            and bool(view.headers.get("access-control-request-method")))


def realm(view: RequestView) -> str:
    """Envoy's ``buildOriginalUri``: scheme, host, and the path *with* its query, the
    path cut to 256 characters (jwt_authn's limit). A token sent as a query parameter
    is echoed to the client that sent it, exactly as Envoy does."""
    scheme = view.headers.get("x-forwarded-proto") or view.scheme or "http"
    return f"{scheme}://{view.host}{view.original_path[:MAX_REALM_PATH]}"


def www_authenticate(view: RequestView, status: Status) -> str:
    if status is Status.JWT_MISSED:
        return f'Bearer realm="{realm(view)}"'
    return f'Bearer realm="{realm(view)}", error="invalid_token"'


def claim_value(payload: Mapping[str, Any], claim: str) -> str | None:
    """``outputClaimToHeaders``: a dotted path to a string, number or bool, as Envoy prints it."""
    value: Any = payload
    for part in claim.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.6g}"
    return None


_UNSENDABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
"""Control characters other than HTAB: RFC 9110 5.5 field values exclude them, and a
proxy must refuse CR, LF and NUL (Envoy answers such an upstream request with a 5xx)."""


def header_value_ok(value: str) -> bool:
    """Whether ``value`` can be sent as a header value as it is."""
    return _UNSENDABLE.search(value) is None


class UnsendableClaim(AuthzError):
    """A claim an ``outputClaimToHeaders`` entry names holds a character no header
    value may carry. The request is refused (401): never a header a proxy must
    reject, and never the request without a header the policy promised."""

    def __init__(self, good: _Good, header: str) -> None:
        self.good = good
        self.header = header
        super().__init__(header)


def normalize_claims(payload: Mapping[str, Any], spaced: frozenset[str]) -> Mapping[str, Any]:
    """``normalize_payload_in_metadata``: split the named top-level string claims on spaces.

    The payload is read-only from here on (by type: no ``MappingProxyType``, which
    the cycle collector would track once per cached token; see ``verify._untracked``);
    it is copied only when a claim is split, so a token without ``scope``/``permission``
    strings keeps one dict, not two. A split claim is a tuple, like any JSON array."""
    out: dict[str, Any] | None = None
    for name in spaced:
        value = payload.get(name)
        if isinstance(value, str):
            if out is None:
                out = dict(payload)
            out[name] = tuple([v for v in value.split(" ") if v])
    return out if out is not None else payload


def _header_names(extractor: Extractor) -> frozenset[str]:
    names = {loc.name for loc, _ in extractor.headers}
    if extractor.cookies:
        names.add("cookie")
    return frozenset(names)


_NO_TOKEN, _PREFLIGHT = "no token", "preflight"
PLAN_MEMO_SIZE = CacheSizes().scopes
"""Distinct sets of rules in scope (one per combination of RequestAuthentications;
``--scope-cache-size``)."""


class Authenticator:
    """Authenticates requests for one policy snapshot against the live key sets.

    ``policies`` is the snapshot's ``RequestAuthnPolicies`` (selection per
    scope), or a plain sequence of rules applied to every scope.
    """

    def __init__(
        self,
        policies: RequestAuthnPolicies | Sequence[JwtRule],
        keys: KeyProvider | None = None,
        *,
        cache: TokenCache | None = None,
        clock_skew: int = CLOCK_SKEW_SECONDS,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        scope_cache_size: int = PLAN_MEMO_SIZE,
        outcome_cache_size: int = CacheSizes().decisions,
    ) -> None:
        if isinstance(policies, RequestAuthnPolicies):
            self._rules_for: Callable[[Scope], tuple[JwtRule, ...]] = policies.rules_for
            every_rule = policies.all_rules
        else:
            fixed = tuple(sorted(policies, key=lambda r: r.issuer))
            self._rules_for = lambda _scope: fixed
            every_rule = fixed
        self.all_token_headers = _header_names(Extractor(every_rule)) if every_rule else (
            frozenset())
        """Every header any rule, in any scope, reads tokens from: what logs must
        never show (``authz.redact``)."""
        self.keys = keys
        self.cache = cache if cache is not None else TokenCache(skew=clock_skew)
        self.clock_skew = clock_skew
        self.max_token_bytes = max_token_bytes
        self._plans: IdentityMemo[_Plan] = IdentityMemo(scope_cache_size)
        self._successes: IdentityMemo[AuthnSuccess] = IdentityMemo(outcome_cache_size)
        """Per cached ``Jwt`` and the plan/provider/place it verified for: a token's
        outcome is built once while the token cache hands out the same ``Jwt``. Pays
        on decision-cache misses of a cached token: with the snapshot's ``decisions``
        memo, workload ``paths`` (one token, many paths) costs ~300k instructions per
        ``Check`` against ~390k without, 23% less (the response is not rebuilt)."""
        self._per_plan: IdentityMemo[AuthnSuccess] = IdentityMemo(2 * scope_cache_size)
        """Per plan, outcomes that depend on nothing else: a request in scope without
        any token (``_NO_TOKEN``) and a CORS preflight (``_PREFLIGHT``)."""
        self._rule_ids: dict[JwtRule, int] = {}
        self._inline: dict[str, KeySet] = {}

    def rules_for(self, scope: Scope) -> tuple[JwtRule, ...]:
        return self._rules_for(scope)

    def token_headers(self, scope: Scope) -> frozenset[str]:
        """The headers tokens are looked for in (``cookie`` for cookie places) in scope.
        With ``AUTHN_HEADERS`` and the query, all of the request authentication reads."""
        rules = self._rules_for(scope)
        if not rules:
            return frozenset()
        return _header_names(self._plan(rules).union)

    @property
    def key_generation(self) -> object:
        """Changes whenever a key set this authenticator reads may have changed."""
        return self.keys.generation if self.keys is not None else None

    def authenticate(self, view: RequestView, now: float) -> AuthnResult:
        """Decide one request. ``now`` is Unix time in seconds."""
        return self.authenticate_until(view, now)[0]

    def authenticate_until(self, view: RequestView, now: float) -> tuple[AuthnResult, float]:
        """The outcome and the moment from which the tokens' time checks can change it
        (``inf``: not before the keys or the request change)."""
        rules = self._rules_for(view.scope)
        if not rules:
            return NO_TOKEN, math.inf
        plan = self._plan(rules)
        if is_cors_preflight(view):
            found = self._per_plan.get(plan, _PREFLIGHT)
            if found is None:
                found = self._per_plan.put(plan, AuthnSuccess(
                    claims=None, upstream_headers_to_remove=plan.output_headers), _PREFLIGHT)
            return found, math.inf
        run = _Run(self, RequestParts(view.headers, view.query), now)
        providers = plan.providers
        if len(providers) == 1:
            status = run.optional(providers[0])
        else:
            children: list[Callable[[], Status]] = [
                (lambda p=p: run.branch(p, False)) for p in providers  # type: ignore[misc]
            ]
            children.append(lambda: all_of([
                (lambda p=p: run.optional(p)) for p in providers  # type: ignore[misc]
            ]))
            status = any_of(children)
        if status is Status.OK and len(providers) > 1:
            # With one provider its own extraction found every token in scope and
            # all of them verified (a failure returns above); with several, a token
            # at a place only another provider reads must verify too.
            status = self._check_all_tokens(plan, run)
        if status is not Status.OK:
            return self._failure(view, status, run), run.until
        try:
            return self._success(plan, run), run.until
        except UnsendableClaim as exc:
            return self._unsendable(view, exc, run), run.until

    # -- compile ---------------------------------------------------------------

    def _plan(self, rules: tuple[JwtRule, ...]) -> _Plan:
        found = self._plans.get(rules)
        if found is not None:
            return found
        providers: list[_Provider] = []
        for i, rule in enumerate(rules):
            extractor = Extractor((rule,))
            locations = frozenset(
                loc for loc, _ in (*extractor.headers, *extractor.params, *extractor.cookies))
            rule_id = self._rule_ids.setdefault(rule, len(self._rule_ids))
            inline = None
            if rule.jwks:
                inline = self._inline.get(rule.jwks)
                if inline is None:
                    inline = self._inline.setdefault(rule.jwks, parse_jwks(rule.jwks))
            providers.append(_Provider(
                index=i, rule=rule, rule_id=rule_id, extractor=extractor, locations=locations,
                audiences=frozenset(sanitize_audience(a) for a in rule.audiences),
                spaced=frozenset(rule.space_delimited_claims), inline_keys=inline,
            ))
        outputs = sorted({h for r in rules for h in r.output_headers})
        plan = _Plan(tuple(providers), Extractor(rules), tuple(outputs), next(_plan_serials))
        return self._plans.put(rules, plan)

    # -- one token -------------------------------------------------------------

    def _verify(self, p: _Provider, token: str, now: float
                ) -> tuple[Status, Jwt | None, float]:
        """Envoy's ``startVerify`` for one token and one provider; with the first moment
        the answer can change for the same keys (the token's ``time_horizon``; ``inf``
        for a token that cannot be parsed; ``now`` when a refetch was asked for: the
        new keys may answer differently, and a remembered answer would not ask again)."""
        keys = p.inline_keys if p.inline_keys is not None else (
            self.keys.keys_for(p.rule) if self.keys is not None else None)
        if len(token) > self.max_token_bytes:
            return Status.JWT_BAD_FORMAT, None, math.inf
        digest = token_digest(token)
        jwt = None
        forged = False
        if keys is not None:
            if keys.usable:
                jwt = self.cache.get(p.rule_id, digest, keys.fingerprints, now)
            if jwt is None:
                jwt = self.cache.rejected(p.rule_id, digest, keys.fingerprints)
                forged = jwt is not None
        cached = jwt is not None and not forged
        signed = None
        if jwt is None:
            try:
                signed = parse_token(token, self.max_token_bytes)
            except JwtError as exc:
                return exc.status, None, math.inf
            jwt = signed.jwt
        until = time_horizon(jwt, now, self.clock_skew)
        if jwt.iss != p.rule.issuer:
            return Status.JWT_UNKNOWN_ISSUER, None, until
        status = check_time(jwt, now, self.clock_skew)
        if status is not Status.OK:
            return status, None, until
        if not audience_allowed(jwt, p.audiences):
            return Status.JWT_AUDIENCE_NOT_ALLOWED, None, until
        if cached:
            return Status.OK, jwt, until
        if keys is None:
            return Status.JWKS_FETCH_FAIL, None, until
        if forged or signed is None:  # a remembered forgery: not parsed or tried again
            return Status.JWT_VERIFICATION_FAIL, None, until
        status, jwk = verify_signature(signed, keys)
        if status is Status.OK and jwk is not None:
            return status, self.cache.put(
                p.rule_id, digest, jwt, jwk.fingerprint, now,
                keep_segment=bool(p.rule.output_payload_to_header)), until
        if status is Status.JWT_VERIFICATION_FAIL:
            self.cache.reject(p.rule_id, digest, keys.fingerprints, jwt)
        if (jwt.kid is not None and jwt.kid not in keys.kids and p.inline_keys is None
                and self.keys is not None):
            self.keys.request_refetch(p.rule)
            return status, None, now
        return status, None, until

    # -- results ---------------------------------------------------------------

    def _check_all_tokens(self, plan: _Plan, run: _Run) -> Status:
        """Every token at any location in scope must verify for some declaring provider."""
        verified = {(g.token.token, g.token.location) for g in run.goods}
        for tok in plan.union.extract(run.parts):
            if (tok.token, tok.location) in verified:
                continue
            statuses: list[Status] = []
            for p in plan.providers:
                if tok.location not in p.locations:
                    continue
                status, _ = run.verify(p, tok)
                if status is Status.OK:
                    break
                statuses.append(status)
            else:
                run.failures.append((plan.providers[0], tok, aggregate(statuses)))
                return aggregate(statuses)
        return Status.OK

    def _failure(self, view: RequestView, status: Status, run: _Run) -> AuthnFailure:
        audience = status is Status.JWT_AUDIENCE_NOT_ALLOWED
        detail = ""
        for p, tok, failed in reversed(run.failures):
            if failed is status:
                detail = f"{p.rule.source}: token at {tok.location}"
                break
        return AuthnFailure(
            status=403 if audience else 401,
            body=status.message,
            www_authenticate=www_authenticate(view, status),
            reason=(Reason.JWT_AUDIENCE if audience else Reason.JWT_INVALID).value,
            detail=detail,
        )

    def _unsendable(self, view: RequestView, exc: UnsendableClaim, run: _Run) -> AuthnFailure:
        status = Status.JWT_CLAIM_BAD_HEADER_VALUE
        failure = self._failure(view, status, run)
        where = f"{exc.good.provider.rule.source}: token at {exc.good.token.location}"
        return AuthnFailure(failure.status, failure.body, failure.www_authenticate,
                            failure.reason, f"{where}: claim for header {exc.header}")

    def _success(self, plan: _Plan, run: _Run) -> AuthnSuccess:
        """What a verified request gets. With one token, a pure function of the plan,
        the token's place and the (cached, shared) parsed token: built once per
        token and reused while the token cache keeps handing out the same ``Jwt``."""
        if not run.goods:
            found = self._per_plan.get(plan, _NO_TOKEN)
            if found is None:
                found = self._per_plan.put(plan, self._build_success(plan, run), _NO_TOKEN)
            return found
        if len(run.goods) != 1:
            return self._build_success(plan, run)
        good = run.goods[0]
        where = (plan.serial, good.provider.index, good.token.location.key)
        found = self._successes.get(good.jwt, where)
        if found is None:
            found = self._successes.put(good.jwt, self._build_success(plan, run), where)
        return found

    def _build_success(self, plan: _Plan, run: _Run) -> AuthnSuccess:
        set_headers: dict[str, str] = {}
        remove_headers: list[str] = []
        remove_params: list[str] = []
        claims: Mapping[str, Any] | None = None
        principal: str | None = None
        for good in run.goods:
            rule, jwt = good.provider.rule, good.jwt
            if rule.output_payload_to_header:
                set_headers[rule.output_payload_to_header] = jwt.payload_segment
            for c in rule.output_claim_to_headers:
                value = claim_value(jwt.payload, c.claim)
                if value is not None:
                    if not header_value_ok(value):
                        raise UnsendableClaim(good, c.header)
                    set_headers[c.header] = value
            if not rule.forward_original_token:
                loc = good.token.location
                if loc.kind is LocationKind.HEADER and loc.name not in remove_headers:
                    remove_headers.append(loc.name)
                elif loc.kind is LocationKind.PARAM and loc.name not in remove_params:
                    remove_params.append(loc.name)
            claims = normalize_claims(jwt.payload, good.provider.spaced)
            principal = f"{jwt.iss}/{jwt.sub}"
        for name in plan.output_headers:
            if name not in remove_headers:
                remove_headers.append(name)
        remove = tuple(h for h in remove_headers if h not in set_headers)
        metadata: Mapping[str, Any] = (
            {METADATA_PAYLOAD_KEY: claims} if claims is not None else _EMPTY)
        return AuthnSuccess(
            claims=claims,
            upstream_headers=tuple(Header(k, v) for k, v in set_headers.items()),
            upstream_headers_to_remove=remove,
            query_parameters_to_remove=tuple(remove_params),
            dynamic_metadata=metadata,
            principal=principal,
        )
