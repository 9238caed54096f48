"""RequestAuthentication on the request path: pure, synchronous, no I/O.

The merged rules of a scope become Envoy ``JwtProvider``s, and the request is
judged by the requirement tree Istio's ``convertToEnvoyJwtConfig``
(pilot/pkg/security/authn/policy_applier.go, with istio/istio#60830) builds,
evaluated the way Envoy's jwt_authn ``verifier.cc`` evaluates it:

- rule i becomes ``requires_any[pi, allow_missing]``, or the bare ``pi`` when it
  says ``presence: REQUIRED``;
- one rule: that requirement alone;
- several, none REQUIRED: ``requires_any[p0, .., pN-1, requires_all[<each rule's>]]``;
- several, some REQUIRED: ``requires_all[<each rule's>]`` (no "any provider" shortcut).

``requires_any`` runs its children in order and stops at the first success;
``requires_all`` stops at the first failure. A provider extracts the tokens at its
own places and verifies them from the last found to the first, stopping at the first
failure. Every verified token has its side effects at once, as in Envoy, whether or
not its branch then succeeds: its place is removed (unless forwarded), its payload
and claim headers are added, its payload becomes the metadata (the last one wins).
A provider that runs first removes the client's headers of its own output names.

Key sets are read from the JWKS manager with plain dict reads; an unknown
``kid`` asks the manager for a rate-limited refetch and is answered from the
keys at hand. When that refetch runs, the failure names it (``AuthnFailure.refetches``)
so the server, which can await, may wait for it and decide again (``authz.server``):
this module itself never waits.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from authz.authn.cache import TokenCache, token_digest
from authz.authn.claim_headers import claim_value
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
    "AUTHN_HEADERS", "Authenticator", "AuthnFailure", "AuthnSuccess", "KeyProvider",
    "PendingKeys", "StaticKeys",
    "aggregate", "claim_value", "header_value_ok", "is_cors_preflight", "normalize_claims",
    "realm",
    "www_authenticate",
]

METADATA_PAYLOAD_KEY = "payload"
"""Istio sets ``payload_in_metadata: payload`` (reference A.2)."""
MAX_REALM_PATH = 256
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class PendingKeys(Protocol):
    """A key-set fetch in flight (the JWKS manager's ``Refetch``)."""

    async def wait(self, limit: float) -> bool:
        """True once it succeeded, within ``limit`` seconds; False at once if too
        many wait already; False if it failed or took longer."""
        ...


class KeyProvider(Protocol):
    """Live key sets for remote rules (``JwksManager`` implements it)."""

    def keys_for(self, rule: JwtRule) -> KeySet | None:
        """The current set, or None if none was ever fetched. Must not block."""
        ...

    def request_refetch(self, rule: JwtRule) -> PendingKeys | None:
        """Ask for an early refetch (unknown kid); must not block. The fetch in
        flight for that rule's keys, if one runs, for a caller that can wait."""
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
    refetches: tuple[PendingKeys, ...] = field(default=(), compare=False)
    """Key-set fetches in flight for tokens refused only for an unknown ``kid``: the
    answer may change once they land (the server may wait for them, bounded)."""


AuthnResult = AuthnSuccess | AuthnFailure


@dataclass(frozen=True, slots=True)
class _Provider:
    index: int
    rule: JwtRule
    rule_id: int
    extractor: Extractor
    audiences: frozenset[str]
    spaced: frozenset[str]
    inline_keys: KeySet | None
    outputs: tuple[str, ...]
    """Its payload and claim header names: what it removes from the request first."""

    @property
    def required(self) -> bool:
        return self.rule.presence is Presence.REQUIRED


class _Kind(Enum):
    PROVIDER = "provider"
    OPTIONAL = "requires_any[provider, allow_missing]"
    ANY = "requires_any"
    ALL = "requires_all"


@dataclass(frozen=True, slots=True)
class _Node:
    """One node of Envoy's requirement tree."""

    kind: _Kind
    provider: _Provider | None = None
    children: tuple[_Node, ...] = ()


def requirement_tree(providers: Sequence[_Provider]) -> _Node:
    """Istio's ``convertToEnvoyJwtConfig`` (policy_applier.go, istio/istio#60830)."""
    inner = tuple(_Node(_Kind.PROVIDER if p.required else _Kind.OPTIONAL, p)
                  for p in providers)
    if len(inner) == 1:
        return inner[0]
    every = _Node(_Kind.ALL, children=inner)
    if any(p.required for p in providers):
        return every
    return _Node(_Kind.ANY, children=(*(_Node(_Kind.PROVIDER, p) for p in providers), every))


@dataclass(frozen=True, slots=True)
class _Plan:
    providers: tuple[_Provider, ...]
    tree: _Node
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
    """One request's evaluation: extraction and verification memoized, and the
    request's changes so far (as Envoy makes them while the tree runs)."""

    __slots__ = ("auth", "events", "failures", "goods", "log", "now", "parts", "refetches",
                 "removed_headers", "removed_params", "tokens", "until", "verdicts")

    def __init__(self, auth: Authenticator, parts: RequestParts, now: float) -> None:
        self.auth = auth
        self.parts = parts
        self.now = now
        self.tokens: dict[int, tuple[ExtractedToken, ...]] = {}
        self.verdicts: dict[tuple[int, str], tuple[Status, Jwt | None]] = {}
        self.goods: dict[tuple[int, str, TokenLocation], _Good] = {}
        """Verified tokens in the order of their last verification (the last one's
        payload is the metadata)."""
        self.failures: list[tuple[_Provider, ExtractedToken, Status]] = []
        self.log: list[_Good] = []
        """Every verification, in order (a token verified twice is here twice)."""
        self.removed_headers: dict[str, None] = {}
        self.removed_params: dict[str, None] = {}
        """Places removed so far, in the order removed (dicts as ordered sets)."""
        self.events: list[int] = []
        """What changed the output headers, in order: ``i >= 0`` provider i ran (and
        removed its output names); ``~k`` the verification ``log[k]`` added its values.
        Replayed only to build a response (``Authenticator._outputs``); as a tuple, it
        is part of the key a built response is remembered by."""
        self.until = math.inf
        """When the time checks of the tokens read so far can first answer differently."""
        self.refetches: list[PendingKeys] = []
        """Fetches in flight that unknown kids asked for (``AuthnFailure.refetches``)."""

    def tokens_for(self, p: _Provider) -> tuple[ExtractedToken, ...]:
        found = self.tokens.get(p.index)
        if found is None:
            found = p.extractor.extract(self.parts)
            self.tokens[p.index] = found
        if self.removed_headers or self.removed_params:
            found = tuple(t for t in found if not self._removed(t.location))
        return found

    def _removed(self, loc: TokenLocation) -> bool:
        if loc.kind is LocationKind.HEADER:
            return loc.name in self.removed_headers
        return loc.kind is LocationKind.PARAM and loc.name in self.removed_params

    def verify(self, p: _Provider, tok: ExtractedToken) -> tuple[Status, Jwt | None]:
        key = (p.index, tok.token)
        verdict = self.verdicts.get(key)
        if verdict is None:
            status, jwt, until = self.auth._verify(p, tok.token, self.now, self.refetches)
            verdict = self.verdicts[key] = (status, jwt)
            if until < self.until:
                self.until = until
        return verdict

    def provider(self, p: _Provider) -> Status:
        """Envoy's ``ProviderVerifierImpl``: remove the client's output headers, then
        verify every token at the provider's places, last found first."""
        self.events.append(p.index)
        tokens = self.tokens_for(p)
        if not tokens:
            return Status.JWT_MISSED
        for tok in reversed(tokens):
            status, jwt = self.verify(p, tok)
            if status is not Status.OK or jwt is None:
                self.failures.append((p, tok, status))
                return status
            self._verified(_Good(p, tok, jwt))
        return Status.OK

    def _verified(self, good: _Good) -> None:
        """``verifyKey``'s side effects for one token: the place is removed now (a later
        provider must not find it); the output headers are recorded, built on demand."""
        rule = good.provider.rule
        self.events.append(~len(self.log))
        self.log.append(good)
        if not rule.forward_original_token:
            loc = good.token.location
            if loc.kind is LocationKind.HEADER:
                self.removed_headers[loc.name] = None
            elif loc.kind is LocationKind.PARAM:
                self.removed_params[loc.name] = None
        mark = (good.provider.index, good.token.token, good.token.location)
        self.goods.pop(mark, None)
        self.goods[mark] = good

    def evaluate(self, node: _Node) -> Status:
        """Envoy's verifier for ``node`` (``verifier.cc``)."""
        kind = node.kind
        if kind is _Kind.PROVIDER:
            assert node.provider is not None
            return self.provider(node.provider)
        if kind is _Kind.OPTIONAL:
            assert node.provider is not None
            status = self.provider(node.provider)
            return Status.OK if status is Status.JWT_MISSED else status
        if kind is _Kind.ALL:
            for child in node.children:
                status = self.evaluate(child)
                if status is not Status.OK:
                    return status
            return Status.OK
        statuses: list[Status] = []
        for child in node.children:
            status = self.evaluate(child)
            if status is Status.OK:
                return status
            statuses.append(status)
        return aggregate(statuses)


def aggregate(statuses: Sequence[Status]) -> Status:
    """A failed ``requires_any``'s status (``AnyVerifierImpl::onComplete``): the last
    real failure; else ``Jwt issuer is not configured`` if a child said so; else
    ``Jwt is missing``. The first two only say a branch had nothing of its own."""
    final = Status.JWT_MISSED
    for status in statuses:
        if status is Status.JWT_UNKNOWN_ISSUER and final is Status.JWT_MISSED:
            final = status
    for status in statuses:
        if status not in (Status.JWT_MISSED, Status.JWT_UNKNOWN_ISSUER):
            final = status
    return final


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
    uri = f"{scheme}://{view.host}{view.original_path[:MAX_REALM_PATH]}"
    if _UNSENDABLE.search(uri) is not None:
        # Never a header value a proxy must refuse: no parser in front of authz lets
        # a control character through today, and none reaches the answer if one does.
        uri = _UNSENDABLE.sub(lambda m: f"%{ord(m.group()):02X}", uri)
    return uri


def www_authenticate(view: RequestView, status: Status) -> str:
    if status is Status.JWT_MISSED:
        return f'Bearer realm="{realm(view)}"'
    return f'Bearer realm="{realm(view)}", error="invalid_token"'


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
        status = run.evaluate(plan.tree)
        if status is not Status.OK:
            failure = self._failure(view, status, run)
            if run.refetches:
                failure = dataclasses.replace(failure, refetches=tuple(run.refetches))
            return failure, run.until
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
            rule_id = self._rule_ids.setdefault(rule, len(self._rule_ids))
            inline = None
            if rule.jwks:
                inline = self._inline.get(rule.jwks)
                if inline is None:
                    inline = self._inline.setdefault(rule.jwks, parse_jwks(rule.jwks))
            providers.append(_Provider(
                index=i, rule=rule, rule_id=rule_id, extractor=extractor,
                audiences=frozenset(sanitize_audience(a) for a in rule.audiences),
                spaced=frozenset(rule.space_delimited_claims), inline_keys=inline,
                outputs=tuple(dict.fromkeys(rule.output_headers)),
            ))
        outputs = dict.fromkeys(h for r in rules for h in r.output_headers)  # rule order
        plan = _Plan(tuple(providers), requirement_tree(providers), Extractor(rules),
                     tuple(outputs), next(_plan_serials))
        return self._plans.put(rules, plan)

    # -- one token -------------------------------------------------------------

    def _verify(self, p: _Provider, token: str, now: float,
                refetches: list[PendingKeys] | None = None
                ) -> tuple[Status, Jwt | None, float]:
        """Envoy's ``startVerify`` for one token and one provider; with the first moment
        the answer can change for the same keys (the token's ``time_horizon``; ``inf``
        for a token that cannot be parsed; ``now`` when a refetch was asked for: the
        new keys may answer differently, and a remembered answer would not ask again).
        A fetch in flight for an unknown kid is added to ``refetches``."""
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
            pending = self.keys.request_refetch(p.rule)
            if pending is not None and refetches is not None:
                refetches.append(pending)
            return status, None, now
        return status, None, until

    # -- results ---------------------------------------------------------------

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
        the providers that ran, the token's place and the (cached, shared) parsed token:
        built once per token and reused while the token cache hands out the same ``Jwt``."""
        if not run.goods:
            events = tuple(run.events)
            found = self._per_plan.get(plan, (_NO_TOKEN, events))
            if found is None:
                found = self._per_plan.put(plan, self._build_success(plan, run),
                                           (_NO_TOKEN, events))
            return found
        if len(run.goods) != 1:
            return self._build_success(plan, run)
        good = next(iter(run.goods.values()))
        where = (plan.serial, good.provider.index, good.token.location.key, tuple(run.events))
        found = self._successes.get(good.jwt, where)
        if found is None:
            found = self._successes.put(good.jwt, self._build_success(plan, run), where)
        return found

    @staticmethod
    def _outputs(plan: _Plan, run: _Run) -> dict[str, list[tuple[str, _Good]]]:
        """Output header -> the values that reach upstream, replaying ``run.events``:
        jwt_authn first removes every rule's output names (measured on Envoy 1.40: also
        those of providers that never run), a provider that runs removes its own again,
        and each verified token adds its values (``addCopy``)."""
        outputs: dict[str, list[tuple[str, _Good]]] = {name: [] for name in plan.output_headers}
        for event in run.events:
            if event >= 0:
                for name in plan.providers[event].outputs:
                    outputs[name] = []
                continue
            good = run.log[~event]
            rule, jwt = good.provider.rule, good.jwt
            if rule.output_payload_to_header:
                outputs[rule.output_payload_to_header.lower()].append(
                    (jwt.payload_segment, good))
            for c in rule.output_claim_to_headers:
                value = claim_value(jwt.payload, c.claim)
                if value is not None:
                    outputs[c.header.lower()].append((value, good))
        return outputs

    def _build_success(self, plan: _Plan, run: _Run) -> AuthnSuccess:
        """The request's changes as ``upstream_headers`` (the first value of a name
        replaces the client's, later ones are appended, as Envoy's ``addCopy`` after
        the provider's removal), and the removals of the rest."""
        set_headers: list[Header] = []
        outputs = self._outputs(plan, run)
        remove = [name for name in run.removed_headers if name not in outputs]
        for name, values in outputs.items():
            if not values:
                remove.append(name)
                continue
            for k, (value, good) in enumerate(values):
                if not header_value_ok(value):
                    raise UnsendableClaim(good, name)
                set_headers.append(Header(name, value, append=k > 0))
        claims: Mapping[str, Any] | None = None
        principal: str | None = None
        if run.goods:
            last = next(reversed(run.goods.values()))
            claims = normalize_claims(last.jwt.payload, last.provider.spaced)
            principal = f"{last.jwt.iss}/{last.jwt.sub}"
        metadata: Mapping[str, Any] = (
            {METADATA_PAYLOAD_KEY: claims} if claims is not None else _EMPTY)
        return AuthnSuccess(
            claims=claims,
            upstream_headers=tuple(set_headers),
            upstream_headers_to_remove=tuple(remove),
            query_parameters_to_remove=tuple(run.removed_params),
            dynamic_metadata=metadata,
            principal=principal,
        )
