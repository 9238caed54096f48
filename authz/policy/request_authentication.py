"""RequestAuthentication resources -> validated, immutable JWT rules.

Validation follows Istio's CRD schema and ``validateJwtRule`` (reference A.2):
a resource Istio would reject is rejected here with the field path named.

Selection (reference A.1, ``ShouldAttachPolicy`` + ``newPolicyApplier``): the
rules of every policy in the root namespace and in the workload namespace that
attach to the workload are concatenated with no precedence, then stable-sorted
by issuer. A ``targetRef``/``targetRefs`` policy attaches only to gateways and
waypoints, never to the sidecar workload a route's scope describes, so it is
validated and kept but never applied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from authz.policy.errors import Location, PolicyErrors
from authz.policy.fields import FieldParser, TargetRef, attaches, type_name
from authz.policy.load import Resource
from authz.request.scope import Scope

__all__ = [
    "ALWAYS_SPACE_DELIMITED", "ClaimToHeader", "HeaderLocation", "JwtRule", "Presence",
    "RequestAuthentication", "check_inline_jwks", "check_jwks_uri", "is_request_authentication",
    "parse_duration", "parse_request_authentication",
]

KIND = "RequestAuthentication"
API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
MAX_JWT_RULES = 4096
MAX_SPACE_DELIMITED_CLAIMS = 64
MAX_JWKS_URI = 2048
DEFAULT_TIMEOUT = 5.0
"""``JWTRule.timeout`` default (reference A.2)."""
ALWAYS_SPACE_DELIMITED = ("permission", "scope")
"""Istio always adds these to ``normalize_payload_in_metadata`` (reference A.2)."""
DEFAULT_HEADER = "authorization"
DEFAULT_PREFIX = "Bearer "
DEFAULT_PARAM = "access_token"

_CLAIM_HEADER = re.compile(r"^[-_A-Za-z0-9]+$")
_HEADER_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_RULE_FIELDS = (
    "issuer", "audiences", "jwksUri", "jwks_uri", "jwks", "fromHeaders", "fromParams",
    "fromCookies", "outputPayloadToHeader", "outputClaimToHeaders", "forwardOriginalToken",
    "timeout", "spaceDelimitedClaims", "presence",
)


class Presence(StrEnum):
    OPTIONAL = "OPTIONAL"
    REQUIRED = "REQUIRED"


@dataclass(frozen=True, slots=True)
class HeaderLocation:
    name: str
    """Lower-cased: header names are case-insensitive."""
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    header: str
    claim: str



@dataclass(frozen=True, slots=True)
class JwtRule:
    """One ``jwtRules[]`` entry, validated. Becomes one Envoy ``JwtProvider``."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks_uri: str = ""
    jwks: str = ""
    from_headers: tuple[HeaderLocation, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    forward_original_token: bool = False
    timeout: float = DEFAULT_TIMEOUT
    space_delimited_claims: tuple[str, ...] = ALWAYS_SPACE_DELIMITED
    """Sorted union of ``scope``, ``permission`` and the rule's own list."""
    presence: Presence = Presence.OPTIONAL
    source: str = ""
    """``RequestAuthentication ns/name jwtRules[i]``, for logs."""

    @property
    def uses_discovery(self) -> bool:
        """Neither ``jwks`` nor ``jwksUri``: keys come from OIDC discovery (A.6)."""
        return not self.jwks and not self.jwks_uri

    @property
    def has_explicit_locations(self) -> bool:
        return bool(self.from_headers or self.from_params or self.from_cookies)

    @property
    def header_locations(self) -> tuple[HeaderLocation, ...]:
        """Where headers are searched; Envoy's defaults when the rule names no location."""
        if self.has_explicit_locations:
            return self.from_headers
        return (HeaderLocation(DEFAULT_HEADER, DEFAULT_PREFIX),)

    @property
    def param_locations(self) -> tuple[str, ...]:
        return self.from_params if self.has_explicit_locations else (DEFAULT_PARAM,)

    @property
    def output_headers(self) -> tuple[str, ...]:
        """Header names this rule writes; a client-sent copy is always stripped."""
        names = [c.header.lower() for c in self.output_claim_to_headers]
        if self.output_payload_to_header:
            names.append(self.output_payload_to_header.lower())
        return tuple(names)


@dataclass(frozen=True, slots=True)
class RequestAuthentication:
    name: str
    namespace: str
    rules: tuple[JwtRule, ...]
    selector: Mapping[str, str] | None = None
    target_refs: tuple[TargetRef, ...] = ()
    api_version: str = API_VERSIONS[0]
    location: Location | None = None

    @property
    def ref(self) -> str:
        return f"{KIND} {self.namespace}/{self.name}"

    def attaches_to(self, scope: Scope) -> bool:
        """Istio's ``ShouldAttachPolicy`` for a normal (sidecar) workload.

        The namespace is checked by the caller (root or workload namespace).
        """
        return attaches(self.namespace, self.selector, self.target_refs, scope.namespace,
                        scope.labels)


def parse_duration(text: str) -> float | None:
    """A Go/CEL duration (``5s``, ``1m30s``, ``10ms``, ``1.5s``) in seconds, else None."""
    if not text:
        return None
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


def check_jwks_uri(uri: str) -> str | None:
    """Istio's ``ParseJwksURI``: an absolute http(s) URL with a host."""
    if len(uri) > MAX_JWKS_URI:
        return f"at most {MAX_JWKS_URI} characters"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        return f"invalid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "url must have scheme http:// or https://"
    if not parts.hostname:
        return "url must have a host"
    if port == 0:
        return "port must be in 1-65535"
    return None


def check_inline_jwks(text: str) -> str | None:
    """Istio validates ``jwks`` with a JWK parser: it must be a JSON key set."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"jwks parse error: {exc}"
    if not isinstance(data, dict):
        return "jwks parse error: not a JSON object"
    keys = data.get("keys")
    if keys is None:
        # jwt_verify_lib also reads a {kid: PEM certificate} map (reference A.4).
        if data and all(isinstance(v, str) and "BEGIN CERTIFICATE" in v for v in data.values()):
            return None
        return "jwks parse error: missing [keys]"
    if not isinstance(keys, list):
        return "jwks parse error: [keys] is not an array"
    return None


class _Parser(FieldParser):
    """Walks one resource, collecting every error instead of stopping at the first."""

    def strings(self, value: Any, path: str, limit: int | None = None) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(path, f"must be a list of strings, got {type_name(value)}")
            return ()
        if limit is not None and len(value) > limit:
            self.error(path, f"at most {limit} items are allowed, got {len(value)}")
        out: list[str] = []
        for i, item in enumerate(value):
            text = self.string(item, f"{path}[{i}]")
            if text is None:
                continue
            if text == "":
                self.error(f"{path}[{i}]", f"{path}[{i}] in body should be at least 1 chars long")
                continue
            out.append(text)
        return tuple(out)

    def policy(self) -> RequestAuthentication | None:
        res = self.res
        if res.api_version not in API_VERSIONS:
            self.error("apiVersion", f"unsupported apiVersion {res.api_version!r} for {KIND} "
                       f"(expected one of {', '.join(API_VERSIONS)})")
        spec = res.spec
        self.known(spec, ("selector", "targetRef", "targetRefs", "jwtRules"), "spec")
        selector = self.selector(spec.get("selector"))
        refs = self.target_refs(spec)
        present = [k for k in ("selector", "targetRef", "targetRefs") if spec.get(k) is not None]
        if len(present) > 1:
            self.error(f"spec.{present[1]}", "only one of targetRefs or selector can be set")
        rules: list[JwtRule] = []
        raw_rules = spec.get("jwtRules")
        if raw_rules is not None:
            for i, raw in enumerate(self.items(raw_rules, "spec.jwtRules", MAX_JWT_RULES)):
                rule = self.rule(raw, f"spec.jwtRules[{i}]", f"{res.namespace}/{res.name}", i)
                if rule is not None:
                    rules.append(rule)
        if self.errors:
            return None
        return RequestAuthentication(
            name=res.name, namespace=res.namespace, rules=tuple(rules), selector=selector,
            target_refs=refs, api_version=res.api_version, location=res.location,
        )

    def rule(self, value: Any, path: str, policy: str, index: int) -> JwtRule | None:
        if value is None:
            self.error(path, f"{path} in body must be of type object")
            return None
        data = self.mapping(value, path)
        if data is None:
            return None
        before = len(self.errors)
        self.known(data, _RULE_FIELDS, path)
        issuer = self.string(data.get("issuer", ""), f"{path}.issuer") or ""
        if not issuer:
            self.error(f"{path}.issuer", "issuer must be set")
        audiences = self.strings(data.get("audiences"), f"{path}.audiences")
        uri_keys = [k for k in ("jwksUri", "jwks_uri", "jwks") if data.get(k) is not None]
        if len(uri_keys) > 1:
            self.error(f"{path}.{uri_keys[1]}", "only one of jwks or jwksUri can be set")
        jwks_uri = ""
        for key in ("jwksUri", "jwks_uri"):
            if data.get(key) is None:
                continue
            text = self.string(data[key], f"{path}.{key}")
            if text is None:
                continue
            problem = "should be at least 1 chars long" if not text else check_jwks_uri(text)
            if problem:
                self.error(f"{path}.{key}", problem)
            jwks_uri = text
        jwks = ""
        if data.get("jwks") is not None:
            jwks = self.string(data["jwks"], f"{path}.jwks") or ""
            problem = check_inline_jwks(jwks) if jwks else None
            if problem:
                self.error(f"{path}.jwks", problem)
        headers = self.from_headers(data.get("fromHeaders"), f"{path}.fromHeaders")
        params = self.strings(data.get("fromParams"), f"{path}.fromParams")
        cookies = self.strings(data.get("fromCookies"), f"{path}.fromCookies")
        payload_header = ""
        if data.get("outputPayloadToHeader") is not None:
            ppath = f"{path}.outputPayloadToHeader"
            payload_header = self.string(data["outputPayloadToHeader"], ppath) or ""
            if payload_header and not _HEADER_TOKEN.match(payload_header):
                self.error(ppath, f"invalid HTTP header name {payload_header!r}")
        claims = self.claim_headers(data.get("outputClaimToHeaders"),
                                    f"{path}.outputClaimToHeaders")
        forward = data.get("forwardOriginalToken", False)
        if forward is None:
            forward = False
        if not isinstance(forward, bool):
            self.error(f"{path}.forwardOriginalToken",
                       f"must be a boolean, got {type_name(forward)}")
            forward = False
        timeout = DEFAULT_TIMEOUT
        if data.get("timeout") is not None:
            tpath = f"{path}.timeout"
            text = self.string(data["timeout"], tpath)
            if text is not None:
                parsed = parse_duration(text)
                if parsed is None or parsed < 0.001:
                    self.error(tpath, "must be a valid duration greater than 1ms")
                else:
                    timeout = parsed
        spaced = self.strings(data.get("spaceDelimitedClaims"), f"{path}.spaceDelimitedClaims",
                              MAX_SPACE_DELIMITED_CLAIMS)
        presence = Presence.OPTIONAL
        if data.get("presence") is not None:
            raw_presence = data["presence"]
            if isinstance(raw_presence, str) and raw_presence in Presence.__members__:
                presence = Presence(raw_presence)
            else:
                self.error(f"{path}.presence", f"Unsupported value: {json.dumps(raw_presence)}: "
                           'supported values: "OPTIONAL", "REQUIRED"')
        if len(self.errors) != before:
            return None
        return JwtRule(
            issuer=issuer, audiences=audiences, jwks_uri=jwks_uri, jwks=jwks,
            from_headers=headers, from_params=params, from_cookies=cookies,
            output_payload_to_header=payload_header.lower(),
            output_claim_to_headers=claims, forward_original_token=forward,
            timeout=timeout,
            space_delimited_claims=tuple(sorted(set(ALWAYS_SPACE_DELIMITED) | set(spaced))),
            presence=presence, source=f"{KIND} {policy} jwtRules[{index}]",
        )

    def from_headers(self, value: Any, path: str) -> tuple[HeaderLocation, ...]:
        if value is None:
            return ()
        out: list[HeaderLocation] = []
        for i, raw in enumerate(self.items(value, path)):
            hpath = f"{path}[{i}]"
            if raw is None:
                self.error(hpath, "location header name must be non-null")
                continue
            item = self.mapping(raw, hpath)
            if item is None:
                continue
            self.known(item, ("name", "prefix"), hpath)
            if "name" not in item:
                self.error(f"{hpath}.name", f"{hpath}.name: Required value")
                continue
            name = self.string(item["name"], f"{hpath}.name")
            prefix = self.string(item.get("prefix", "") or "", f"{hpath}.prefix")
            if name is None or prefix is None:
                continue
            if not name:
                self.error(f"{hpath}.name", f"{hpath}.name in body should be at least 1 chars long")
            elif not _HEADER_TOKEN.match(name):
                self.error(f"{hpath}.name", f"invalid HTTP header name {name!r}")
            else:
                out.append(HeaderLocation(name.lower(), prefix))
        return tuple(out)

    def claim_headers(self, value: Any, path: str) -> tuple[ClaimToHeader, ...]:
        if value is None:
            return ()
        out: list[ClaimToHeader] = []
        for i, raw in enumerate(self.items(value, path)):
            ipath = f"{path}[{i}]"
            if raw is None:
                self.error(ipath, f"{ipath} in body must be of type object")
                continue
            item = self.mapping(raw, ipath)
            if item is None:
                continue
            self.known(item, ("header", "claim"), ipath)
            header = self.string(item.get("header", ""), f"{ipath}.header")
            claim = self.string(item.get("claim", ""), f"{ipath}.claim")
            if header is None or claim is None:
                continue
            ok = True
            if not claim:
                self.error(f"{ipath}.claim",
                           f"{ipath}.claim in body should be at least 1 chars long")
                ok = False
            if not header:
                self.error(f"{ipath}.header",
                           f"{ipath}.header in body should be at least 1 chars long")
                ok = False
            elif not _CLAIM_HEADER.match(header):
                self.error(f"{ipath}.header",
                           f"{ipath}.header in body should match '{_CLAIM_HEADER.pattern}'")
                ok = False
            if ok:
                out.append(ClaimToHeader(header.lower(), claim))
        return tuple(out)



def is_request_authentication(resource: Resource) -> bool:
    return resource.kind == KIND and resource.api_version.startswith("security.istio.io/")


def parse_request_authentication(resource: Resource) -> RequestAuthentication:
    """Validate and convert one resource. Raises ``PolicyErrors`` listing every problem."""
    if resource.kind != KIND:
        raise PolicyErrors([resource.error("kind", f"expected kind {KIND}, got {resource.kind}")])
    parser = _Parser(resource)
    policy = parser.policy()
    if parser.errors or policy is None:
        raise PolicyErrors(parser.errors or [resource.error("spec", "invalid policy")])
    return policy
