"""Resources -> an immutable Snapshot that decides requests.

A snapshot is compiled once, off the request path, and replaced whole: the
request path reads ``store.current`` once and keeps that object for the rest of
the ``Check``, so a reload never changes a decision half-way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import structlog

from authz.authn.cache import TokenCache
from authz.authn.engine import (
    AUTHN_HEADERS,
    Authenticator,
    AuthnFailure,
    AuthnSuccess,
    KeyProvider,
    PendingKeys,
)
from authz.authn.selection import RequestAuthnPolicies
from authz.decision import Decision, Header, Reason
from authz.memo import CacheSizes, IdentityMemo, Memo, cached
from authz.pipeline.decision_cache import DecisionCache, Inputs, request_key
from authz.policy.authorization import (
    CUSTOM_EXPLANATION,
    TARGET_REF_EXPLANATION,
    AuthorizationPolicy,
    parse_authorization_policy,
)
from authz.policy.errors import Location, PolicyError, PolicyErrors
from authz.policy.load import Resource
from authz.policy.request_authentication import JwtRule
from authz.rbac import engine as rbac
from authz.rbac.context import AuthzContext, RequestAuth
from authz.redact import DEFAULT_TOKEN_HEADERS
from authz.request.address import XFF, make_peer, original_client_ip
from authz.request.scope import Scope, parse_scope
from authz.request.view import Peer, RequestView

__all__ = ["PolicyOptions", "Snapshot", "SnapshotStore", "compile_snapshot", "empty_snapshot"]

log = structlog.get_logger("authz.policy")

ISTIO_SECURITY_GROUP = "security.istio.io/"
RBAC_DENIED_BODY = "RBAC: access denied"
"""Envoy RBAC filter's exact 403 body."""
ENFORCED_KINDS = frozenset({"AuthorizationPolicy", "RequestAuthentication"})
NOT_FOR_THIS_SERVER = {
    "PeerAuthentication": "mTLS modes are enforced by the proxies' TLS settings, not by ext_authz",
}


_NONE_PENDING: tuple[PendingKeys, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    """Mesh-wide settings that change how policies compile."""

    root_namespace: str = "istio-system"
    trust_domain: str = "cluster.local"
    trust_domain_aliases: tuple[str, ...] = ()
    xff_num_trusted_hops: int = 0
    caches: CacheSizes = field(default_factory=CacheSizes)
    """How much each cache of a snapshot keeps (``authz.memo``)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    kinds: Mapping[str, int]
    """Policies compiled, by kind. The resources themselves are not kept: after
    compilation only the matchers are needed, and specs are half the memory."""
    authorization: rbac.PolicySet
    options: PolicyOptions
    authentication: RequestAuthnPolicies
    authenticator: Authenticator
    recent: DecisionCache = field(init=False, compare=False, repr=False)
    """Decisions by what a request's decision can read (``decision_cache``)."""
    inputs: Memo[tuple[str, tuple[tuple[str, str], ...]], Inputs] = field(
        init=False, compare=False, repr=False)
    """Per scope, the headers its decisions read."""
    decisions: IdentityMemo[Decision] = field(init=False, compare=False, repr=False)
    """Built decisions by authn outcome (shared per cached token) and RBAC result: a
    cached token on a request the decision cache has not seen (one token, many
    paths) gets the same Decision, so its response is not serialized again."""
    responses: IdentityMemo[bytes] = field(init=False, compare=False, repr=False)
    """Per cached ``Decision``, the adapter's serialized answer (``envoy/response.py``):
    as many as the decision cache keeps. Pays on every decision-cache hit (w1-w4):
    building and serializing the response (claims metadata included) costs more than
    the rest of a hit (tight loop: ~19 µs against a ~14 µs ``Check``)."""
    answers: IdentityMemo[Any] = field(init=False, compare=False, repr=False)
    """Per cached ``Decision`` and HTTP front door, that adapter's rendered and encoded
    answer (``authz/http``). Pays on every decision-cache hit: a repeated request
    (w1-like, tight loop on the HTTP handler, encoding included) took ~24 µs with it
    against ~38 µs rendering and encoding each time. Only what the decision alone
    says: the token headers an nginx or Traefik allow echoes differ per request and
    are appended to the memoized answer per request (``authz.http.render.with_echo``)."""
    peer: Callable[[str, int | None, str], Peer] = field(init=False, compare=False, repr=False)
    """``make_peer``, memoized (``memo.cached``) for the adapter's views. With
    ``scope``, pays on every request: parsing two peers and the scope again costs
    ~80k instructions per view (cachegrind), ~60% of a w1 ``Check``."""
    scope: Callable[[str, str, str, str], Scope] = field(init=False, compare=False, repr=False)
    """``parse_scope``, memoized (``memo.cached``) for the adapter's views."""
    token_locations: tuple[str, ...] = field(init=False, compare=False, repr=False)
    """Every header any rule reads tokens from, and ``authorization`` (Istio's default
    place, kept where no rule applies): what an nginx or Traefik allow echoes when the
    decision keeps it (``authz.http.render.echoed``)."""

    def __post_init__(self) -> None:
        sizes = self.options.caches
        object.__setattr__(self, "recent", DecisionCache(
            sizes.decisions, self.authenticator.cache.max_ttl))
        object.__setattr__(self, "inputs", Memo(sizes.scopes))
        object.__setattr__(self, "decisions", IdentityMemo(sizes.decisions))
        object.__setattr__(self, "responses", IdentityMemo(sizes.decisions))
        object.__setattr__(self, "answers", IdentityMemo(sizes.decisions))
        object.__setattr__(self, "peer", cached(make_peer, sizes.scopes))
        object.__setattr__(self, "scope", cached(parse_scope, sizes.scopes))
        object.__setattr__(self, "token_locations", tuple(sorted(
            self.authenticator.all_token_headers | DEFAULT_TOKEN_HEADERS)))

    def evaluate(self, view: RequestView, now: float) -> Decision:
        """Decide one request as Istio's sidecar would: jwt_authn, then RBAC.

        Pure apart from the bounded caches: no I/O, no awaits. A key set the JWKS
        manager replaces is read as a whole, old or new. A request that repeats
        everything a decision reads gets the decision made for the first one.
        """
        return self.evaluate_pending(view, now)[0]

    def evaluate_pending(self, view: RequestView, now: float
                         ) -> tuple[Decision, tuple[PendingKeys, ...]]:
        """``evaluate``, with the key-set fetches in flight that could change a
        refusal of a token for its unknown ``kid`` (almost always none): a caller
        that can await may wait for them and evaluate again (``authz.server``)."""
        scope = view.scope
        inputs = self.inputs.get(scope.key)
        if inputs is None:
            inputs = self.inputs.put(scope.key, Inputs.of(
                self.authenticator.token_headers(scope), AUTHN_HEADERS,
                self.authorization.header_names(scope), frozenset({XFF})))
        key = request_key(view, inputs)
        generation = self.authenticator.key_generation
        decision = self.recent.get(key, now, generation)
        if decision is not None:
            return decision, _NONE_PENDING
        decision, until, pending = self.decide(view, now)
        self.recent.put(key, decision, now, until, generation)
        return decision, pending

    def decide(self, view: RequestView, now: float
               ) -> tuple[Decision, float, tuple[PendingKeys, ...]]:
        """Authenticate and authorize, whatever was decided before; with the moment the
        tokens' time checks can first change the answer, and the fetches in flight
        that can (``evaluate_pending``)."""
        authn, until = self.authenticator.authenticate_until(view, now)
        if isinstance(authn, AuthnFailure):
            return Decision.deny(
                authn.status, authn.body, Reason(authn.reason),
                response_headers=(Header("www-authenticate", authn.www_authenticate),),
                detail=authn.detail,
            ), until, authn.refetches
        auth = RequestAuth(authn.claims) if authn.claims is not None else None
        ctx = AuthzContext(
            view, auth, original_client_ip(view, self.options.xff_num_trusted_hops)
        )
        result = self.authorization.evaluate(ctx)
        extra = (result.allowed, result.policy, result.reason, result.dry_run, result.audit)
        decision = self.decisions.get(authn, extra)
        if decision is None:
            decision = self.decisions.put(authn, self._build_decision(authn, result), extra)
        return decision, until, _NONE_PENDING

    def _build_decision(self, authn: AuthnSuccess, result: rbac.AuthzResult) -> Decision:
        # The Decision's own constructor, with no dict of shared fields passed on by
        # allow()/deny() (half the time of building one).
        issuer = authn.claims.get("iss") if authn.claims is not None else None
        issuer = issuer if isinstance(issuer, str) else None
        if not result.allowed:
            return Decision(
                allowed=False, status=403, reason=Reason.RBAC_DENIED, body=RBAC_DENIED_BODY,
                policy=result.policy, detail=result.reason, dry_run=result.dry_run,
                audit=result.audit, principal=authn.principal, issuer=issuer,
            )
        return Decision(
            allowed=True, status=200,
            reason=Reason.NO_POLICY if result.reason == rbac.NO_POLICY else Reason.ALLOWED,
            policy=result.policy, detail=result.reason,
            upstream_headers=authn.upstream_headers,
            upstream_headers_to_remove=authn.upstream_headers_to_remove,
            query_parameters_to_remove=authn.query_parameters_to_remove,
            dynamic_metadata=authn.dynamic_metadata, dry_run=result.dry_run,
            audit=result.audit, principal=authn.principal, issuer=issuer,
        )

    @property
    def authorization_policies(self) -> tuple[AuthorizationPolicy, ...]:
        return self.authorization.policies

    @property
    def jwt_namespaces(self) -> frozenset[str]:
        """Namespaces holding a RequestAuthentication."""
        return frozenset(p.namespace for p in self.authentication.policies)

    @property
    def jwt_rules(self) -> tuple[JwtRule, ...]:
        """Every rule whose keys the JWKS manager must keep fresh."""
        return self.authentication.all_rules


def empty_snapshot(options: PolicyOptions | None = None) -> Snapshot:
    return compile_snapshot((), 0, options)


def compile_snapshot(
    resources: Iterable[Resource],
    version: int,
    options: PolicyOptions | None = None,
    keys: KeyProvider | None = None,
) -> Snapshot:
    """Validate and compile; raise ``PolicyErrors`` naming every bad resource.

    Resources of kinds that are not policies are ignored (a mounted ConfigMap
    folder often holds other files). An Istio security resource that this build
    cannot enforce is an error, never a silent allow.
    """
    options = options or PolicyOptions()
    errors: list[PolicyError] = []
    kept: list[Resource] = []
    """RequestAuthentications (compiled together below); AuthorizationPolicies are
    compiled one by one and their resources dropped as ``resources`` streams."""
    authz_policies: list[AuthorizationPolicy] = []
    counts = {"AuthorizationPolicy": 0, "RequestAuthentication": 0}
    seen: dict[tuple[str, str, str], Location] = {}
    for res in resources:
        if not res.api_version.startswith(ISTIO_SECURITY_GROUP):
            log.debug("resource_ignored", kind=res.kind, name=res.name, file=res.location.file)
            continue
        key = (res.kind, res.namespace, res.name)
        if key in seen:
            errors.append(PolicyError(
                f"duplicate {res.ref}: also defined at {seen[key]}", res.location,
                res.ref))
            continue
        seen[key] = res.location
        if res.kind in NOT_FOR_THIS_SERVER:
            log.warning("resource_not_enforced", kind=res.kind, resource=res.ref,
                        file=str(res.location), why=NOT_FOR_THIS_SERVER[res.kind])
        elif res.kind not in ENFORCED_KINDS:
            errors.append(PolicyError(
                f"{res.api_version} {res.kind} is not enforced by this version of authz",
                res.location, res.ref))
        elif res.kind == "AuthorizationPolicy":
            try:
                authz_policies.append(parse_authorization_policy(res))
                counts[res.kind] += 1
            except PolicyErrors as exc:
                errors.extend(exc.errors)
        else:  # RequestAuthentication: parsed together below, to index them by scope
            kept.append(res)
            counts[res.kind] += 1
    try:
        policy_set = rbac.PolicySet.compile(
            authz_policies,
            options.root_namespace,
            (options.trust_domain, *options.trust_domain_aliases),
            options.caches.scopes,
        )
    except PolicyErrors as exc:
        errors.extend(exc.errors)
    try:
        authentication = RequestAuthnPolicies.from_resources(kept, options.root_namespace)
    except PolicyErrors as exc:
        errors.extend(exc.errors)
    if errors:
        raise PolicyErrors(errors)
    for policy in policy_set.custom:
        log.info("custom_policy_not_evaluated", policy=policy.ref, why=CUSTOM_EXPLANATION)
    for policy in policy_set.not_attached:
        log.info("policy_for_gateway_scopes", policy=policy.ref, why=TARGET_REF_EXPLANATION)
    return Snapshot(
        version, MappingProxyType(counts), policy_set, options, authentication,
        Authenticator(authentication, keys, scope_cache_size=options.caches.scopes,
                      outcome_cache_size=options.caches.decisions,
                      cache=TokenCache(options.caches.tokens,
                                       max_rejected=options.caches.rejected_tokens)),
    )


class SnapshotStore:
    """Holds the snapshot in use. Swapping is one reference assignment."""

    def __init__(self, initial: Snapshot | None = None) -> None:
        self._current = initial or empty_snapshot()

    @property
    def current(self) -> Snapshot:
        return self._current

    def swap(self, snapshot: Snapshot) -> Snapshot:
        previous, self._current = self._current, snapshot
        return previous
