"""Fuzzing: token parsing and verification, JWKS parsing, policy loading, the
request view and whole CheckRequests. Nothing may raise except the documented
errors, and a Check always ends in a CheckResponse."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.authn.keys import parse_jwks
from authz.authn.verify import JwtError, Status, parse_token, verify_signature
from authz.envoy.request_view import view_from_check_request
from authz.envoy.response import response_bytes
from authz.pipeline.snapshot import compile_snapshot
from authz.policy.errors import PolicyError, PolicyErrors
from authz.policy.load import parse_text
from authz.request.scope import ScopeError
from tests.attacks.corpus import Keys, attacks, controls, good_claims, jwks_a, policy, signed
from tests.fuzz.conftest import COUNTS, fuzz

KEYS = Keys.generate()
KEYSET = parse_jwks(json.dumps(jwks_a(KEYS)))
SEEDS = [*attacks(KEYS).values(), *controls(KEYS).values()]
RBAC = Path(__file__).with_name("policies.yaml").read_text()
SNAPSHOT = compile_snapshot(parse_text(policy(KEYS), "ra.json") + parse_text(RBAC, "rbac.yaml"), 1)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
claim_sets = st.fixed_dictionaries({}, optional={
    "iss": st.sampled_from(["https://a.example", "https://b.example", ""]) | json_values,
    "sub": json_values, "aud": json_values, "exp": json_values, "nbf": json_values,
    "iat": json_values, "name": json_values, "groups": json_values,
}) | st.dictionaries(st.text(max_size=8), json_values, max_size=5)
headers_json = st.fixed_dictionaries({"alg": st.sampled_from(
    ["RS256", "ES256", "HS256", "none", "EdDSA", "PS512"]) | json_values}, optional={
    "kid": st.sampled_from(["a-1", "a-ec", "b-1"]) | json_values, "crit": json_values,
    "typ": json_values, "jku": json_values,
})


def _mutate(token: str, data: st.DataObject) -> str:
    """One random edit of a known token: a character, a cut, a splice, a dot."""
    if not token:
        return token
    i = data.draw(st.integers(0, len(token) - 1))
    return data.draw(st.sampled_from([
        token[:i] + data.draw(st.characters(max_codepoint=0x2FF)) + token[i + 1:],
        token[:i], token[i:], token[:i] + "." + token[i:], token[:i] + token[i + 1:],
        token + token[i:], token.replace(".", data.draw(st.sampled_from(["", "..", " "])), 1),
    ]))


tokens = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=",
            max_size=300),
    st.builds(lambda h, p, s: f"{b64(json.dumps(h).encode())}.{b64(json.dumps(p).encode())}"
              f".{b64(s)}", headers_json, claim_sets, st.binary(max_size=300)),
    st.builds(lambda h, p, s: f"{b64(h)}.{b64(p)}.{b64(s)}",
              st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=80)),
    st.builds(lambda c: signed(c, KEYS.a), claim_sets),
)


def _check_token(token: str) -> None:
    try:
        parsed = parse_token(token)
    except JwtError as exc:
        assert isinstance(exc.status, Status)
        return
    status, _ = verify_signature(parsed, KEYSET)
    assert isinstance(status, Status)


@given(tokens)
def _token_property(token: str) -> None:
    COUNTS["tokens"] += 1
    _check_token(token)


@given(st.sampled_from([t for h in SEEDS for t in h.values()]), st.data())
def _mutated_token_property(value: str, data: st.DataObject) -> None:
    COUNTS["mutated tokens"] += 1
    _check_token(_mutate(value.removeprefix("Bearer "), data))


def test_token_parsing_and_verification() -> None:
    fuzz(_token_property)


def test_mutated_known_tokens() -> None:
    fuzz(_mutated_token_property)


jwk_dicts = st.fixed_dictionaries({"kty": st.sampled_from(["RSA", "EC", "oct", "OKP", "x"])
                                   | json_values}, optional={
    "kid": json_values, "alg": json_values, "use": json_values, "crv": json_values,
    "n": st.text(max_size=40) | json_values, "e": st.sampled_from(["AQAB", "", "AA"]),
    "x": st.text(max_size=60), "y": st.text(max_size=60), "k": st.text(max_size=60),
})
jwks_texts = st.one_of(
    st.text(max_size=300), st.binary(max_size=300),
    st.builds(lambda ks: json.dumps({"keys": ks}), st.lists(jwk_dicts, max_size=4)),
    st.builds(json.dumps, json_values),
    st.integers(1, 3_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3_000).map(lambda n: '{"keys":' + "[" * n + "]" * n + "}"),
)


@given(jwks_texts)
def _jwks_property(text: str | bytes) -> None:
    COUNTS["jwks"] += 1
    keys = parse_jwks(text)  # never raises: failures are a KeySet with an error
    assert keys.keys or keys.error is not None or keys.keys == ()


def test_jwks_parsing() -> None:
    fuzz(_jwks_property)


yaml_fragments = st.sampled_from([
    "apiVersion: security.istio.io/v1\n", "kind: AuthorizationPolicy\n",
    "kind: RequestAuthentication\n", "metadata: {name: p, namespace: ns}\n", "spec:\n",
    "  action: DENY\n", "  action: CUSTOM\n", "  rules:\n", "  - to:\n",
    "    - operation: {paths: ['/a*', '*b'], methods: [GET]}\n", "  - from:\n",
    "    - source: {principals: ['*'], ipBlocks: ['10.0.0.0/8', 'x']}\n",
    "    when:\n", "    - key: request.auth.claims[groups]\n", "      values: ['a']\n",
    "  jwtRules:\n", "  - issuer: i\n", "    jwks: '{\"keys\":[]}'\n", "    jwksUri: ftp://x\n",
    "  selector: {matchLabels: {app: x}}\n", "---\n", "- [\n", "{{{{\n", ": :\n", "\t\n",
    "  - key: request.headers[x]\n", "    notValues: []\n", "&a [*a]\n", "!!python/object:x\n",
])
policy_texts = st.one_of(
    st.text(max_size=400),
    st.lists(yaml_fragments, max_size=25).map("".join),
    st.builds(lambda doc: json.dumps(doc), st.fixed_dictionaries({
        "apiVersion": st.sampled_from(["security.istio.io/v1", "security.istio.io/v1beta1"]),
        "kind": st.sampled_from(["AuthorizationPolicy", "RequestAuthentication",
                                 "PeerAuthentication", "Other"]),
        "metadata": st.fixed_dictionaries({"name": st.text(max_size=5)}) | json_values,
        "spec": json_values,
    })),
    st.integers(1, 3_000).map(lambda n: "[" * n + "]" * n),
)


@given(policy_texts)
def _policy_property(text: str) -> None:
    COUNTS["policies"] += 1
    with contextlib.suppress(PolicyError, PolicyErrors):
        compile_snapshot(parse_text(text, "fuzz.yaml"), 1)


def test_policy_loading() -> None:
    fuzz(_policy_property)


header_names = st.sampled_from([
    "authorization", "x-forwarded-for", "x-forwarded-proto", "origin", "cookie", "x-name",
    "access-control-request-method", "x-request-id", "traceparent", "host", ":path",
]) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz-:", min_size=1, max_size=12)
header_values = st.one_of(
    st.text(max_size=80), st.sampled_from([h for s in SEEDS for h in s.values()]),
    st.sampled_from(["1.2.3.4, 10.0.0.1", "::1", "garbage,,", "http", "OPTIONS"]),
    tokens.map(lambda t: f"Bearer {t}"),
)
check_requests = st.builds(
    lambda method, path, host, headers, ext, ip, principal, scheme: _request(
        method, path, host, headers, ext, ip, principal, scheme),
    st.sampled_from(["GET", "POST", "OPTIONS", "", "g e t"]) | st.text(max_size=8),
    st.sampled_from(["/", "/admin", "/r?access_token=x", "/a/../b", "//x", "/%2e%2e/"])
    | st.text(max_size=60),
    st.text(max_size=30),
    st.dictionaries(header_names, header_values, max_size=6),
    st.dictionaries(st.sampled_from(["namespace", "labels", "workload", "x"]),
                    st.text(max_size=30) | st.sampled_from(["app=x", "app", "a=b,c=d", "default"]),
                    max_size=3),
    st.sampled_from(["10.1.2.3", "::1", "", "999.1.1.1", "fe80::1%eth0"]) | st.text(max_size=15),
    st.text(max_size=30),
    st.sampled_from(["http", "https", ""]),
)


def _request(method: str, path: str, host: str, headers: dict[str, str], ext: dict[str, str],
             ip: str, principal: str, scheme: str) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host, http.scheme = method, path, host, scheme
    for name, value in headers.items():
        http.headers[name] = value
    for name, value in ext.items():
        req.attributes.context_extensions[name] = value
    req.attributes.source.address.socket_address.address = ip
    req.attributes.source.principal = principal
    return req


def _decide(req: external_auth_pb2.CheckRequest) -> None:
    """What ``AuthorizationService.decide`` does, and the response it serializes."""
    try:
        view = view_from_check_request(req, "default")
    except ScopeError:
        return
    decision = SNAPSHOT.evaluate(view, time.time())
    assert decision.status in (200, 401, 403) or decision.status >= 400
    response_bytes(decision)


@given(check_requests)
def _check_property(req: external_auth_pb2.CheckRequest) -> None:
    COUNTS["check requests"] += 1
    _decide(req)


@given(st.binary(max_size=400))
def _wire_property(raw: bytes) -> None:
    """Arbitrary bytes that happen to decode as a CheckRequest (the request view
    must read whatever a well-formed message carries)."""
    COUNTS["check request bytes"] += 1
    req = external_auth_pb2.CheckRequest()
    try:
        req.ParseFromString(raw)
    except DecodeError:  # the gRPC layer answers these itself
        return
    _decide(req)


def test_check_requests_and_request_view() -> None:
    fuzz(_check_property)


def test_check_request_bytes() -> None:
    fuzz(_wire_property)


def test_the_fuzzed_snapshot_can_allow_and_deny() -> None:
    """The targets above exercise a snapshot that really decides: no vacuous pass."""
    good = _request("GET", "/r", "h", {"authorization": "Bearer " + signed(
        good_claims(groups=["admins"]), KEYS.a)}, {}, "10.1.2.3", "", "http")
    view = view_from_check_request(good, "default")
    assert SNAPSHOT.evaluate(view, time.time()).status == 200
    bad = _request("GET", "/r", "h", {"authorization": "Bearer x.y.z"}, {}, "", "", "http")
    assert SNAPSHOT.evaluate(view_from_check_request(bad, "default"), time.time()).status == 401
    anon = _request("GET", "/admin", "h", {}, {}, "", "", "http")
    assert SNAPSHOT.evaluate(view_from_check_request(anon, "default"), time.time()).status == 403


