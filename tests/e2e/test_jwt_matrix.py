"""A generated differential suite: authz behind real Envoy against real Envoy's own
jwt_authn configured as Istio translates the same RequestAuthentications.

Each generated case is 1 to 3 jwtRules (issuers unique to the case), each reading
tokens at one or two places (the default ``Authorization: Bearer``/``access_token``,
a custom header with and without a prefix, a query parameter, a cookie; shared
between rules or not), ``presence`` OPTIONAL or REQUIRED, and claim headers that
collide between rules. Each request puts a token in some state at each place
(absent, valid for one of the case's issuers, expired, signed by the wrong key,
malformed, from an issuer no rule names). Status, body, ``www-authenticate``, the
upstream path and every upstream header that names a place or an output must be
identical.

One Envoy of each kind serves every case at once (a path prefix per case). The
sample is fixed by ``SEED``; ``AUTHZ_JWT_MATRIX=full`` runs many more cases and
requests.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz.testing.jwt_authn import JWT_AUTHN_FILTER, RBAC, envoy_jwt_filter_routes
from authz.testing.ports import free_port
from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.jwt_rig import JwksServer, Rule, SigningKey, jwks_of, rsa_key
from tests.e2e.rig import EchoUpstream, Envoy, Reply, Route

pytestmark = pytest.mark.e2e

FULL = os.environ.get("AUTHZ_JWT_MATRIX", "") == "full"
SEED = int(os.environ.get("AUTHZ_JWT_MATRIX_SEED", "20260"))
"""Another seed explores other cases; a difference it finds names the seed to rerun."""
CASES, REQUESTS = (400, 24) if FULL else (24, 10)

PLACES = {
    # name: (rule fields, how a token is sent there)
    "default": ({}, ("header", "authorization", "Bearer ")),
    "default-param": ({}, ("param", "access_token", "")),
    "x-tok": ({"from_headers": [("x-tok", "Tok ")]}, ("header", "x-tok", "Tok ")),
    "x-raw": ({"from_headers": [("x-raw", "")]}, ("header", "x-raw", "")),
    "param": ({"from_params": ["tok"]}, ("param", "tok", "")),
    "cookie": ({"from_cookies": ["ck"]}, ("cookie", "ck", "")),
}
RULE_PLACES = ["default", "x-tok", "x-raw", "param", "cookie"]
STATES = ["absent", "valid", "valid", "expired", "wrong-key", "malformed", "unknown-issuer",
          "wrong-aud"]
COMPARED = ("authorization", "x-tok", "x-raw", "cookie")


@dataclass(frozen=True)
class Case:
    index: int
    rules: tuple[Rule, ...]
    places: tuple[str, ...]
    """Every place some rule reads (``default`` brings ``default-param``)."""
    denied: str = ""
    """A DENY policy refuses a request whose principal's ``sub`` starts with this: which
    token became the principal shows in the status (a token's ``sub`` names its place)."""

    @property
    def prefix(self) -> str:
        return f"/c{self.index}/"

    @property
    def namespace(self) -> str:
        return f"c{self.index}"

    def output_headers(self) -> set[str]:
        out = {h for r in self.rules for h, _ in r.claim_headers}
        return out | {r.payload_header for r in self.rules if r.payload_header}


def make_case(rng: random.Random, index: int) -> Case:
    count = rng.choice([1, 2, 2, 3, 3])
    rules = []
    places: list[str] = []
    for i in range(count):
        chosen = rng.sample(RULE_PLACES, rng.choice([1, 1, 2]))
        fields: dict[str, Any] = {}
        for place in chosen:
            for key, value in PLACES[place][0].items():
                fields[key] = [*fields.get(key, []), *value]
            places.append(place)
            if place == "default":
                places.append("default-param")
        if "default" in chosen and len(chosen) > 1:
            # Istio uses the default places only when a rule names none: spell them out.
            fields["from_headers"] = [("authorization", "Bearer "),
                                      *fields.get("from_headers", [])]
            fields["from_params"] = ["access_token", *fields.get("from_params", [])]
        # Names carry the case: one jwt_authn filter serves every case, and Istio gives
        # each workload a filter of its own.
        claim_headers = [(f"x-{index}-sub", "sub"), (f"x-{index}-iss-{i}", "iss")]
        if rng.random() < 0.5:
            claim_headers.append((f"x-{index}-groups", "groups"))
        rules.append(Rule(
            f"https://c{index}-r{i}.example",
            audiences=["api"] if rng.random() < 0.3 else [],
            forward=rng.random() < 0.3,
            payload_header=f"x-{index}-payload" if rng.random() < 0.5 else None,
            claim_headers=claim_headers,
            presence="REQUIRED" if rng.random() < 0.3 else "OPTIONAL",
            **fields,
        ))
    places = list(dict.fromkeys(places))
    return Case(index, tuple(rules), tuple(places), f"{rng.choice(places)}-valid-")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Minter:
    def __init__(self, good: SigningKey, rogue: SigningKey) -> None:
        self.good, self.rogue = good, rogue
        self.now = int(time.time())

    def token(self, state: str, issuer: str, tag: str) -> str:
        claims = {"iss": issuer, "sub": tag, "aud": "api", "groups": ["dev", tag]}
        if state == "valid":
            return self.good.mint(claims)
        if state == "expired":
            return self.good.mint({**claims, "exp": self.now - 3600})
        if state == "wrong-key":
            return self.rogue.mint(claims)
        if state == "wrong-aud":
            return self.good.mint({**claims, "aud": "other"})
        if state == "unknown-issuer":
            return self.good.mint({**claims, "iss": "https://nobody.example"})
        assert state == "malformed"
        return "abc." + b64(json.dumps(claims).encode())


@dataclass(frozen=True)
class Request:
    path: str
    headers: tuple[tuple[str, str], ...]
    label: str


def make_request(rng: random.Random, case: Case, minter: Minter, n: int,
                 forced: dict[str, str] | None = None) -> Request:
    headers: list[tuple[str, str]] = []
    params: list[str] = []
    cookies: list[str] = []
    label = []
    issuers = [r.issuer for r in case.rules]
    for place in case.places:
        state = (forced or {}).get(place) or rng.choice(STATES)
        if forced is not None and place not in forced:
            state = "absent"
        if state == "absent":
            continue
        issuer = rng.choice(issuers)
        token = minter.token(state, issuer, f"{place}-{state}-{issuer[-11:-8]}")
        label.append(f"{place}={state}:{issuer[-10:-8]}")
        kind, name, prefix = PLACES[place][1]
        if kind == "header":
            headers.append((name, prefix + token))
        elif kind == "param":
            params.append(f"{name}={token}")
        else:
            cookies.append(f"{name}={token}")
    if cookies:
        headers.append(("cookie", "; ".join(["other=1", *cookies])))
    if rng.random() < 0.3:  # a client that forges the output headers
        headers += [(f"x-{case.index}-{name}", "forged")
                    for name in ("sub", "payload", "groups", "iss-0", "iss-1")]
        label.append("forged-outputs")
    query = "?" + "&".join([*params, f"n={n}"])
    return Request(case.prefix + "r" + query, tuple(headers), " ".join(label) or "no tokens")


def requests_for(rng: random.Random, case: Case, minter: Minter) -> list[Request]:
    out = [make_request(rng, case, minter, 0, forced={})]
    for k, place in enumerate(case.places, start=1):  # one valid token alone at each place
        out.append(make_request(rng, case, minter, k, forced={place: "valid"}))
    while len(out) < REQUESTS:
        out.append(make_request(rng, case, minter, len(out)))
    return out


def view(reply: Reply, envoy: Envoy, case: Case) -> dict[str, Any]:
    if reply.upstream is None:
        realm = reply.headers.get("www-authenticate")
        return {"status": reply.status, "body": reply.body,
                "www-authenticate": realm and realm.replace(f"127.0.0.1:{envoy.port}", "HOST")}
    names = set(COMPARED) | case.output_headers()
    seen: dict[str, list[str]] = {}
    for k, v in reply.upstream["header_list"]:
        if k in names or k.startswith(f"x-{case.index}-"):
            seen.setdefault(k, []).append(v)
    # ext_authz can only append a value to a header line (``a,b``), where jwt_authn
    # adds a second line of the same name: the same field value (RFC 9110 5.3).
    return {"status": reply.status, "path": reply.upstream["path"],
            "headers": sorted((k, comparable(",".join(v))) for k, v in seen.items())}


def comparable(value: str) -> Any:
    """A claim header holding an object, parsed: Envoy writes an object's members in
    protobuf's map order, which nothing may rely on. Everything else exactly."""
    try:
        parsed = json.loads(base64.b64decode(value, validate=True))
    except ValueError:
        return value
    return ("json", json.dumps(parsed, sort_keys=True)) if "{" in json.dumps(parsed) else value


def ra_document(case: Case, jwks_uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": case.namespace},
        "spec": {"jwtRules": [r.istio(jwks_uri) for r in case.rules]},
    }


def deny_document(case: Case) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-sub", "namespace": case.namespace},
        "spec": {"action": "DENY", "rules": [{"when": [
            {"key": "request.auth.claims[sub]", "values": [case.denied + "*"]}]}]},
    }


def deny_filter(cases: Sequence[Case]) -> dict[str, Any]:
    """Envoy RBAC as Istio translates each case's ``deny_document`` (one filter for all:
    each policy also matches its case's path prefix)."""
    return {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC,
        "rules": {"action": "DENY", "policies": {
            f"ns[{c.namespace}]-policy[deny-sub]-rule[0]": {
                "permissions": [{"url_path": {"path": {"prefix": c.prefix}}}],
                "principals": [{"metadata": {
                    "filter": JWT_AUTHN_FILTER, "path": [{"key": "payload"}, {"key": "sub"}],
                    "value": {"string_match": {"prefix": c.denied}}}}],
            } for c in cases if c.denied}}}}


@pytest.fixture(scope="module")
def keys() -> tuple[SigningKey, SigningKey]:
    return rsa_key("m-1"), rsa_key("m-1")


@pytest.fixture
async def jwks_server(keys: tuple[SigningKey, SigningKey]) -> AsyncIterator[JwksServer]:
    server = JwksServer(jwks_of(keys[0]))
    await server.start()
    yield server
    await server.stop()


def describe(case: Case) -> str:
    rules = []
    for r in case.rules:
        where = [f"h:{n}/{p!r}" for n, p in r.from_headers] + [f"q:{q}" for q in r.from_params]
        where += [f"c:{c}" for c in r.from_cookies]
        rules.append(f"{r.issuer[8:-8]}[{r.presence[0]}{' aud' if r.audiences else ''}"
                     f"{' fwd' if r.forward else ''}] {' '.join(where) or 'default'}")
    return "; ".join(rules)


async def run_cases(cases: Sequence[Case], jwks_server: JwksServer, keys: tuple[
        SigningKey, SigningKey], start_authz: StartAuthz, start_envoy: StartEnvoy,
        echo_upstream: EchoUpstream, tmp_path: Path, rng: random.Random,
        seen: collections.Counter[str]) -> list[str]:
    policy = tmp_path / "ra.yaml"
    policy.write_text("\n---\n".join(json.dumps(doc) for c in cases for doc in (
        ra_document(c, jwks_server.uri), *([deny_document(c)] if c.denied else []))))
    authz = await start_authz(policy)
    routes = [Route(c.prefix, {"namespace": c.namespace}) for c in cases]
    ours = await start_envoy(authz.port, echo_upstream.port, routes)
    reference = await start_envoy(free_port(), echo_upstream.port, wait_healthy=False,
                                  filters=[envoy_jwt_filter_routes(
                                      [(c.prefix, c.rules) for c in cases], jwks_server.jwks),
                                      deny_filter(cases)])
    minter = Minter(*keys)
    differences = []
    for case in cases:
        for req in requests_for(rng, case, minter):
            expected = view(await reference.send("GET", req.path, req.headers), reference, case)
            got = view(await ours.send("GET", req.path, req.headers), ours, case)
            seen[f"{expected['status']} {expected.get('body', '')}".strip()] += 1
            if expected != got:
                differences.append(f"case {case.index} ({describe(case)}) | {req.label}:\n"
                                   f"  envoy jwt_authn: {expected}\n  authz:           {got}")
    return differences


async def test_generated_rules_places_and_token_states(
    keys: tuple[SigningKey, SigningKey], jwks_server: JwksServer, start_authz: StartAuthz,
    start_envoy: StartEnvoy, echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    cases = [make_case(rng, i) for i in range(CASES)]
    seen: collections.Counter[str] = collections.Counter()
    differences = await run_cases(cases, jwks_server, keys, start_authz, start_envoy,
                                  echo_upstream, tmp_path, rng, seen)
    # The sample reaches every kind of answer, the principal DENY included.
    for answer in ("200", "401 Jwt is missing", "401 Jwt issuer is not configured",
                   "401 Jwt is expired", "401 Jwt verification fails",
                   "403 Audiences in Jwt are not allowed", "403 RBAC: access denied"):
        assert seen[answer], f"seed {SEED}: no request answered {answer!r}: {dict(seen)}"
    assert not differences, f"seed {SEED}: {len(differences)} differences\n" + "\n".join(
        differences[:40])


CLAIM_SHAPES: dict[str, Any] = {
    "str": "text", "empty-str": "", "unicode": "é<>&\"'\\/", "int": 42, "zero": 0,
    "negative": -7, "big-int": 12345678901234567, "float": 1.5, "small-float": 1e-7,
    "long-float": 123456789.123, "huge-float": 1e21, "float-whole": 3.0, "true": True,
    "false": False, "null": None, "list-str": ["dev"], "list-empty": [],
    "list-mixed": [1, "a", True, None, {"k": "v"}, 1.5, [2]], "object": {"b": 1, "a": [1, 2]},
    "object-empty": {}, "object-unicode": {"é": "ü", "z": "<>&"},
    "escapes": ["\n\t\b\f\r\u0001/'=", "\u007f\u00ad\u2028\u2029\ufeff\U0001f600"],
    "numbers": [3.0, 0.1, 0.30000000000000004, 1e21, 1e-7, 12345678901234567, -0.0, 1e300],
    "two-53": 9007199254740993, "two-63": 2**63, "below-two-64": 18446744073709549568,
    "two-64": 2**64, "minus-zero": -0.0, "half": 0.5, "neg-float": -2.25,
}
"""Every claim shape ``outputClaimToHeaders`` may copy; each also under ``nested``."""


def claim_rule(issuer: str, prefix: str) -> Rule:
    names = [*CLAIM_SHAPES, "absent"]
    claims = [(f"x-{prefix}-{n}", n) for n in names]
    claims += [(f"x-{prefix}-nested-{n}", f"nested.{n}") for n in names]
    claims += [(f"x-{prefix}-deep", "nested.object.a"), (f"x-{prefix}-through-list",
                                                         "list-str.0")]
    return Rule(issuer, payload_header=f"x-{prefix}-payload", claim_headers=claims)


async def test_every_claim_shape_in_headers(
    keys: tuple[SigningKey, SigningKey], jwks_server: JwksServer, start_authz: StartAuthz,
    start_envoy: StartEnvoy, echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    rule = claim_rule("https://claims.example", "cl")
    case = Case(0, (rule,), ("default",))
    policy = tmp_path / "ra.json"
    policy.write_text(json.dumps(ra_document(case, jwks_server.uri)))
    authz = await start_authz(policy)
    ours = await start_envoy(authz.port, echo_upstream.port,
                             [Route(case.prefix, {"namespace": case.namespace})])
    reference = await start_envoy(free_port(), echo_upstream.port, wait_healthy=False,
                                  filters=[envoy_jwt_filter_routes([(case.prefix, case.rules)],
                                                                   jwks_server.jwks)])
    token = keys[0].mint({"iss": rule.issuer, "sub": "s", **CLAIM_SHAPES,
                          "nested": dict(CLAIM_SHAPES)})
    forged = [(h, "forged") for h, _ in rule.claim_headers[::3]]
    differences = []
    for label, headers in [("token", [("authorization", f"Bearer {token}")]),
                           ("token and forged", [("authorization", f"Bearer {token}"),
                                                 *forged]),
                           ("forged only", forged)]:
        expected = view(await reference.send("GET", case.prefix + "r", headers), reference, case)
        got = view(await ours.send("GET", case.prefix + "r", headers), ours, case)
        if expected != got:
            differences.append(f"{label}:\n  envoy jwt_authn: {expected}\n  authz:           {got}")
    assert not differences, "\n".join(differences)
