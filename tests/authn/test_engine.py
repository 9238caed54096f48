from __future__ import annotations

import base64
import gc
import json
from dataclasses import replace
from typing import Any

import pytest

from authz.authn import engine as engine_module
from authz.authn.engine import (
    Authenticator,
    AuthnFailure,
    AuthnSuccess,
    StaticKeys,
    claim_value,
    header_value_ok,
    normalize_claims,
)
from authz.authn.keys import KeySet, parse_jwks
from authz.authn.selection import RequestAuthnPolicies
from authz.decision import Header
from authz.policy.load import parse_text
from authz.policy.request_authentication import ClaimToHeader, HeaderLocation, JwtRule, Presence
from tests.authn.helpers import (
    COMMON,
    NOW,
    claims,
    ec_key,
    ed_key,
    jwks,
    require_samples,
    rsa_key,
    sample,
    view,
)

KEY = rsa_key()
URI = "https://issuer.example/jwks"
KEYS = StaticKeys(by_uri={URI: parse_jwks(jwks(KEY.jwk(), ec_key().jwk(), ed_key().jwk()))})


def rule(issuer: str = "issuer-1", **kw: Any) -> JwtRule:
    kw.setdefault("jwks_uri", URI)
    return JwtRule(issuer, **kw)


def auth(*rules: JwtRule, keys: Any = KEYS) -> Authenticator:
    return Authenticator(list(rules), keys)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def ok(result: object) -> AuthnSuccess:
    assert isinstance(result, AuthnSuccess), result
    return result


def fail(result: object) -> AuthnFailure:
    assert isinstance(result, AuthnFailure), result
    return result


# -- token matrix -----------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_valid_rsa(alg: str) -> None:
    token = KEY.sign(claims(), alg=alg)
    keys = StaticKeys(by_uri={URI: parse_jwks(jwks(KEY.jwk(with_alg=False)))})
    res = ok(auth(rule(), keys=keys).authenticate(view(headers=bearer(token)), NOW))
    assert res.claims is not None and res.claims["sub"] == "sub-1"
    assert res.principal == "issuer-1/sub-1"
    assert res.upstream_headers_to_remove == ("authorization",)
    assert res.dynamic_metadata == {"payload": res.claims}


def test_valid_es256_and_eddsa() -> None:
    ec, ed = ec_key(), ed_key()
    keys = StaticKeys(by_uri={URI: parse_jwks(jwks(ec.jwk(), ed.jwk()))})
    for key in (ec, ed):
        ok(auth(rule(), keys=keys).authenticate(view(headers=bearer(key.sign(claims()))), NOW))


def test_no_token_passes_without_claims() -> None:
    res = ok(auth(rule()).authenticate(view(), NOW))
    assert res.claims is None and res.dynamic_metadata == {}


def test_no_rules_in_scope_accepts_garbage() -> None:
    res = ok(Authenticator([], KEYS).authenticate(view(headers=bearer("garbage")), NOW))
    assert res == AuthnSuccess(claims=None)


@pytest.mark.parametrize(("payload", "body"), [
    (claims(exp=int(NOW) - 61), "Jwt is expired"),
    (claims(nbf=int(NOW) + 61), "Jwt not yet valid"),
    (claims(iss="someone-else"), "Jwt issuer is not configured"),
    (claims(sub=None) | {"sub": None}, "Jwt payload [sub] field is not a string"),
])
def test_401_cases(payload: dict[str, Any], body: str) -> None:
    token = KEY.sign(payload)
    res = fail(auth(rule()).authenticate(view(headers=bearer(token)), NOW))
    assert (res.status, res.body, res.reason) == (401, body, "jwt_invalid")
    assert res.www_authenticate == (
        'Bearer realm="http://httpbin.foo:8000/headers", error="invalid_token"')
    assert token not in res.detail


def test_inside_skew_passes() -> None:
    ok(auth(rule()).authenticate(view(headers=bearer(KEY.sign(claims(exp=int(NOW) - 59)))), NOW))


def test_wrong_audience_is_403() -> None:
    token = KEY.sign(claims(aud="other"))
    res = fail(auth(rule(audiences=("mine",))).authenticate(view(headers=bearer(token)), NOW))
    assert (res.status, res.body, res.reason) == (
        403, "Audiences in Jwt are not allowed", "jwt_audience_not_allowed")


def test_bad_signature_malformed_alg_none_unknown_kid() -> None:
    good = KEY.sign(claims())
    other = rsa_key(seed=1).sign(claims())
    none = ".".join(good.split(".")[:2]) + ".x"  # keeps RS256 header: signature wrong
    cases = {
        other: "Jwt verification fails",
        "TokenInvalid": "Jwt is not in the form of Header.Payload.Signature with two dots "
                        "and 3 sections",
        none: "Jwt signature is an invalid Base64url encoded",
        KEY.sign(claims(), kid="unknown"): "Jwks doesn't have key to match kid or alg from Jwt",
    }
    for token, body in cases.items():
        res = fail(auth(rule()).authenticate(view(headers=bearer(token)), NOW))
        assert res.body == body, token


def test_alg_none_token() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=").decode()
    res = fail(auth(rule()).authenticate(view(headers=bearer(f"{header}.{payload}.AA")), NOW))
    assert res.body == "Jwt header [alg] is not supported"


def test_token_without_kid_tries_all_keys() -> None:
    ok(auth(rule()).authenticate(view(headers=bearer(KEY.sign(claims(), kid=False))), NOW))


def test_unknown_kid_triggers_refetch_without_waiting() -> None:
    calls: list[str] = []

    class Keys(StaticKeys):
        def request_refetch(self, rule: JwtRule) -> None:
            calls.append(rule.issuer)

    keys = Keys(by_uri=KEYS.by_uri)
    res = fail(auth(rule(), keys=keys).authenticate(
        view(headers=bearer(KEY.sign(claims(), kid="new"))), NOW))
    assert res.status == 401 and calls == ["issuer-1"]


def test_jwks_never_fetched_is_fetch_fail() -> None:
    res = fail(auth(rule(), keys=StaticKeys()).authenticate(
        view(headers=bearer(KEY.sign(claims()))), NOW))
    assert res.body == "Jwks remote fetch is failed"


def test_inline_jwks() -> None:
    r = JwtRule("issuer-1", jwks=jwks(KEY.jwk()))
    ok(Authenticator([r]).authenticate(view(headers=bearer(KEY.sign(claims()))), NOW))
    empty = JwtRule("issuer-1", jwks='{"keys": []}')
    res = fail(Authenticator([empty]).authenticate(view(headers=bearer(KEY.sign(claims()))), NOW))
    assert res.body == "Jwks doesn't have any valid public key"


# -- locations ----------------------------------------------------------------------

def test_query_param_token_is_removed_unless_forwarded() -> None:
    token = KEY.sign(claims())
    res = ok(auth(rule()).authenticate(view(query=f"access_token={token}&x=1"), NOW))
    assert res.query_parameters_to_remove == ("access_token",)
    assert res.upstream_headers_to_remove == ()
    fwd = ok(auth(rule(forward_original_token=True)).authenticate(
        view(query=f"access_token={token}", headers=bearer(token)), NOW))
    assert fwd.query_parameters_to_remove == () and fwd.upstream_headers_to_remove == ()


def test_custom_header_with_prefix() -> None:
    r = rule(from_headers=(HeaderLocation("x-jwt-token", "Value "),))
    token = KEY.sign(claims())
    res = ok(auth(r).authenticate(view(headers={"X-Jwt-Token": f"Value {token}"}), NOW))
    assert res.upstream_headers_to_remove == ("x-jwt-token",)
    # The default location is not searched any more: a bad token there is ignored.
    ok(auth(r).authenticate(view(headers=bearer("garbage")), NOW))


def test_two_tokens_one_bad_is_401() -> None:
    r = rule(from_params=("token", "secondary_token"))
    good, expired = KEY.sign(claims()), KEY.sign(claims(exp=int(NOW) - 3600))
    ok(auth(r).authenticate(view(query=f"token={good}&secondary_token={good}"), NOW))
    res = fail(auth(r).authenticate(view(query=f"token={good}&secondary_token={expired}"), NOW))
    assert res.body == "Jwt is expired"


def test_token_at_location_its_issuer_did_not_declare() -> None:
    r1 = rule("issuer-1", from_headers=(HeaderLocation("x-one"),))
    r2 = rule("issuer-2", from_headers=(HeaderLocation("x-two"),))
    token2 = KEY.sign(claims(iss="issuer-2"))
    ok(auth(r1, r2).authenticate(view(headers={"x-two": token2}), NOW))
    res = fail(auth(r1, r2).authenticate(view(headers={"x-one": token2}), NOW))
    assert res.body == "Jwt issuer is not configured"


def test_one_providers_good_token_passes_beside_a_bad_one_at_another() -> None:
    """Envoy's ``requires_any[p0, p1, requires_all[..]]``: p0 verifies its own token and
    the request passes; p1's place is never read, so its token stays as it came."""
    r1 = rule("issuer-1")
    r2 = rule("issuer-2", from_headers=(HeaderLocation("x-two"),))
    good1 = KEY.sign(claims())
    bad2 = KEY.sign(claims(iss="issuer-2", exp=int(NOW) - 3600))
    res = ok(auth(r1, r2).authenticate(view(headers=bearer(good1) | {"x-two": bad2}), NOW))
    assert res.principal == "issuer-1/sub-1"
    assert res.upstream_headers_to_remove == ("authorization",)
    # Provider order is by issuer: when the bad token's provider comes first, it fails,
    # and the next provider still passes the request.
    r0 = rule("issuer-0", from_headers=(HeaderLocation("x-two"),))
    bad0 = KEY.sign(claims(iss="issuer-0", exp=int(NOW) - 3600))
    ok(auth(r0, r1).authenticate(view(headers=bearer(good1) | {"x-two": bad0}), NOW))
    # With one REQUIRED rule there is no shortcut: every rule's tokens must verify.
    required = replace(r2, presence=Presence.REQUIRED)
    res = fail(auth(r1, required).authenticate(
        view(headers=bearer(good1) | {"x-two": bad2}), NOW))
    assert res.body == "Jwt is expired"


def test_two_required_rules_need_both_tokens() -> None:
    r1 = rule("issuer-1", presence=Presence.REQUIRED)
    r2 = rule("issuer-2", from_headers=(HeaderLocation("x-two"),), presence=Presence.REQUIRED)
    one = bearer(KEY.sign(claims()))
    two = {"x-two": KEY.sign(claims(iss="issuer-2", sub="sub-2"))}
    for headers in (one, two, {}):
        res = fail(auth(r1, r2).authenticate(view(headers=headers), NOW))
        assert (res.status, res.body) == (401, "Jwt is missing")
    res = ok(auth(r1, r2).authenticate(view(headers=one | two), NOW))
    assert res.principal == "issuer-2/sub-2"  # the last verified: rules sorted by issuer


def test_required_beside_optional_rules() -> None:
    """``requires_all[p0, requires_any[p1, allow_missing]]``: the REQUIRED token must
    be there; the optional one may be absent but not bad."""
    r1 = rule("issuer-1", presence=Presence.REQUIRED)
    r2 = rule("issuer-2", from_headers=(HeaderLocation("x-two"),))
    one = bearer(KEY.sign(claims()))
    ok(auth(r1, r2).authenticate(view(headers=one), NOW))
    two = {"x-two": KEY.sign(claims(iss="issuer-2"))}
    assert fail(auth(r1, r2).authenticate(view(headers=two), NOW)).body == "Jwt is missing"
    bad = {"x-two": KEY.sign(claims(iss="issuer-2", exp=int(NOW) - 3600))}
    assert fail(auth(r1, r2).authenticate(view(headers=one | bad), NOW)).body == (
        "Jwt is expired")


def test_output_headers_of_every_rule_are_stripped_and_a_later_provider_resets_its_own(
) -> None:
    """As Envoy 1.40: every rule's output names are removed first, even for a provider
    that never runs; a provider that runs removes its names again, dropping values an
    earlier provider added under a shared name."""
    r1 = rule("issuer-1", output_claim_to_headers=(ClaimToHeader("x-one", "sub"),
                                                   ClaimToHeader("X-Sub", "sub")))
    r2 = rule("issuer-2", from_headers=(HeaderLocation("x-two"),),
              output_claim_to_headers=(ClaimToHeader("x-sub", "sub"),
                                       ClaimToHeader("x-two-sub", "sub")))
    one = bearer(KEY.sign(claims()))
    res = ok(auth(r1, r2).authenticate(view(headers=one), NOW))
    assert res.upstream_headers == (Header("x-one", "sub-1"), Header("x-sub", "sub-1"))
    assert res.upstream_headers_to_remove == ("authorization", "x-two-sub")
    two = {"x-two": KEY.sign(claims(iss="issuer-2", sub="sub-2"))}
    required = replace(r2, presence=Presence.REQUIRED)
    res = ok(auth(r1, required).authenticate(view(headers=one | two), NOW))
    assert res.upstream_headers == (Header("x-one", "sub-1"), Header("x-sub", "sub-2"),
                                    Header("x-two-sub", "sub-2"))


# -- outputs -------------------------------------------------------------------------

def test_output_headers_and_anti_spoofing() -> None:
    r = rule(output_payload_to_header="x-test-payload",
             output_claim_to_headers=(ClaimToHeader("x-jwt-iss", "iss"),
                                      ClaimToHeader("x-jwt-nested", "nested.k"),
                                      ClaimToHeader("x-jwt-list", "groups"),
                                      ClaimToHeader("x-jwt-missing", "nope")))
    token = KEY.sign(claims(nested={"k": True}, groups=["a"]))
    headers = bearer(token) | {"x-jwt-missing": "spoof", "x-jwt-nested": "spoof"}
    res = ok(auth(r).authenticate(view(headers=headers), NOW))
    assert set(res.upstream_headers) == {
        Header("x-test-payload", token.split(".")[1]), Header("x-jwt-iss", "issuer-1"),
        Header("x-jwt-nested", "true"), Header("x-jwt-list", "WyJhIl0=")}
    assert set(res.upstream_headers_to_remove) == {"authorization", "x-jwt-missing"}
    # No token: every output header a client may have sent is stripped.
    none = ok(auth(r).authenticate(view(headers={"x-jwt-iss": "spoof"}), NOW))
    assert set(none.upstream_headers_to_remove) == {
        "x-test-payload", "x-jwt-iss", "x-jwt-nested", "x-jwt-list", "x-jwt-missing"}


@pytest.mark.parametrize("value", [
    "alice\r\nx-admin: true", "a\nb", "a\rb", "nul\x00", "bell\x07", "del\x7f",
])
def test_claim_that_is_no_header_value_is_refused_with_401(value: str) -> None:
    """A CR, LF, NUL or other control character headed for ``outputClaimToHeaders``
    is never emitted (Envoy would answer the upstream request with a 5xx): 401."""
    r = rule(output_claim_to_headers=(ClaimToHeader("x-jwt-name", "name"),))
    token = KEY.sign(claims(name=value))
    res = fail(auth(r).authenticate(view(headers=bearer(token)), NOW))
    assert (res.status, res.body) == (401, "Jwt claim is not a valid header value")
    assert res.www_authenticate.endswith('error="invalid_token"')
    assert "x-jwt-name" in res.detail and value not in res.detail
    # The same token through a rule that copies nothing is fine.
    ok(auth(rule()).authenticate(view(headers=bearer(token)), NOW))


@pytest.mark.parametrize("value", ["tab\tinside", "utf-8 é ✓", "quote\"s"])
def test_claim_with_tab_or_non_ascii_is_still_a_header(value: str) -> None:
    r = rule(output_claim_to_headers=(ClaimToHeader("x-jwt-name", "name"),))
    res = ok(auth(r).authenticate(view(headers=bearer(KEY.sign(claims(name=value)))), NOW))
    assert Header("x-jwt-name", value) in res.upstream_headers


def test_claim_value_formatting() -> None:
    """As Envoy 1.40 writes them (measured: tests/e2e/test_jwt_matrix.py)."""
    payload = {"i": 1562182722, "f": 1.5, "w": 2.0, "b": False, "s": "", "o": {"x": "y"},
               "neg": -7, "big": 12345678901234567, "huge": 1e21, "tiny": 1e-7, "n": None,
               "l": ("dev",), "mixed": (1, "a", True, None, 3.0, 1e21), "lt": ["<>&\u00ad"]}
    assert claim_value(payload, "i") == "1562182722"
    assert claim_value(payload, "f") == "1.500000"
    assert claim_value(payload, "w") == "2"
    assert claim_value(payload, "neg") == "-7.000000"
    assert claim_value(payload, "big") == "12345678901234568"
    assert claim_value(payload, "huge") == "1000000000000000000000.000000"
    assert claim_value(payload, "tiny") == "0.000000"
    assert claim_value(payload, "b") == "false"
    assert claim_value(payload, "s") is None
    assert claim_value(payload, "n") is None
    assert claim_value(payload, "o.x") == "y"
    decoded = {k: base64.b64decode(claim_value(payload, k) or "").decode()
               for k in ("o", "l", "mixed", "lt")}
    assert decoded == {"o": '{"x":"y"}', "l": '["dev"]',
                       "mixed": '[1,"a",true,null,3,1e+21]', "lt": '["\\u003c\\u003e&\\u00ad"]'}
    assert claim_value(payload, "l") == "WyJkZXYiXQ=="


def test_space_delimited_claims_split() -> None:
    r = rule(space_delimited_claims=("custom_scope", "permission", "scope"))
    token = KEY.sign(claims(scope="write  read", custom_scope="admin user", other="a b"))
    res = ok(auth(r).authenticate(view(headers=bearer(token)), NOW))
    assert res.claims is not None
    assert res.claims["scope"] == ("write", "read")
    assert res.claims["custom_scope"] == ("admin", "user")
    assert res.claims["other"] == "a b"


def test_an_authn_outcome_is_immutable() -> None:
    """One outcome is shared by every request of its token (memoized)."""
    res = ok(auth(rule()).authenticate(view(headers=bearer(KEY.sign(claims()))), NOW))
    with pytest.raises(AttributeError):
        res.principal = "someone/else"  # type: ignore[misc]


def test_an_outcomes_claims_leave_the_cycle_collectors_view() -> None:
    """Claims are a plain dict, JSON arrays as tuples (read-only by type, not by a
    ``MappingProxyType`` the collector would track per cached token): flat claims are
    untracked after a collection (docs/design/performance.md, garbage collector)."""
    r = rule(space_delimited_claims=("scope",))
    token = KEY.sign(claims(scope="a b", groups=["g1", ["g2"]], nested={"k": [1, {"x": "y"}]}))
    res = ok(auth(r).authenticate(view(headers=bearer(token)), NOW))
    assert res.claims is not None
    assert res.claims["groups"] == ("g1", ("g2",)) and res.claims["scope"] == ("a", "b")
    assert res.claims["nested"] == {"k": (1, {"x": "y"})}
    flat = ok(auth(r).authenticate(view(headers=bearer(KEY.sign(claims(
        scope="a b", groups=["g1", ["g2"]])))), NOW))
    for _ in range(3):  # a collection untracks what holds nothing tracked: inner first
        gc.collect()
    assert flat.claims is not None and not gc.is_tracked(flat.claims)


def test_claims_are_copied_only_to_split_them() -> None:
    spaced = frozenset({"scope", "permission"})
    payload = {"sub": "a", "scope": "x y"}
    split = normalize_claims(payload, spaced)
    assert split["scope"] == ("x", "y") and payload["scope"] == "x y"  # the token's untouched
    plain = {"sub": "a", "scope": ("x",)}  # already an array: nothing to split
    assert normalize_claims(plain, spaced) is plain


# -- CORS, presence, realm ----------------------------------------------------------

def test_cors_preflight_bypasses_jwt() -> None:
    expired = bearer(KEY.sign(claims(exp=int(NOW) - 3600)))
    preflight = expired | {"origin": "http://x", "access-control-request-method": "POST"}
    a = auth(rule())
    res = ok(a.authenticate(view(method="OPTIONS", headers=preflight), NOW))
    assert res.claims is None
    no_origin = expired | {"access-control-request-method": "POST"}
    fail(auth(rule()).authenticate(view(method="OPTIONS", headers=no_origin), NOW))


def test_presence_required() -> None:
    r = rule(presence=Presence.REQUIRED)
    res = fail(auth(r).authenticate(view(), NOW))
    assert (res.status, res.body) == (401, "Jwt is missing")
    assert res.www_authenticate == 'Bearer realm="http://httpbin.foo:8000/headers"'
    ok(auth(r).authenticate(view(headers=bearer(KEY.sign(claims()))), NOW))


def test_realm_uses_forwarded_proto_and_truncates_path() -> None:
    res = fail(auth(rule()).authenticate(view(
        headers=bearer("x") | {"x-forwarded-proto": "https"}, path="/" + "a" * 400,
        query="secret=1"), NOW))
    assert res.www_authenticate.startswith('Bearer realm="https://httpbin.foo:8000/aaa')
    assert "secret" not in res.www_authenticate
    assert len(res.www_authenticate.split('"')[1]) == len("https://httpbin.foo:8000") + 256


def test_realm_never_carries_a_control_character() -> None:
    """No proxy delivers one today; if one did, the 401 must still be sendable."""
    res = fail(auth(rule()).authenticate(view(
        headers=bearer("x") | {"x-forwarded-proto": "ht\rtp"}, path="/a\nb\x00"), NOW))
    assert res.www_authenticate.startswith('Bearer realm="ht%0Dtp://httpbin.foo:8000/a%0Ab%00')
    assert header_value_ok(res.www_authenticate)


# -- cache ---------------------------------------------------------------------------

def test_cache_hit_still_checks_time_and_key_presence() -> None:
    token = KEY.sign(claims(exp=int(NOW) + 100))
    sets: dict[str, KeySet] = {URI: parse_jwks(jwks(KEY.jwk()))}
    keys = StaticKeys(by_uri=sets)
    a = auth(rule(), keys=keys)
    ok(a.authenticate(view(headers=bearer(token)), NOW))
    assert len(a.cache) == 1
    ok(a.authenticate(view(headers=bearer(token)), NOW + 1))
    res = fail(a.authenticate(view(headers=bearer(token)), NOW + 200))
    assert res.body == "Jwt is expired"
    ok(a.authenticate(view(headers=bearer(token)), NOW))
    sets[URI] = parse_jwks(jwks(rsa_key("rsa-1", seed=1).jwk()))  # rotated: same kid, new key
    res = fail(a.authenticate(view(headers=bearer(token)), NOW))
    assert res.body == "Jwt verification fails"


def test_a_repeated_forgery_is_refused_from_the_cache_until_the_keys_change() -> None:
    other = rsa_key("rsa-1", seed=7)  # same kid as KEY, different key: signature fails
    forged = other.sign(claims())
    sets: dict[str, KeySet] = {URI: parse_jwks(jwks(KEY.jwk()))}
    a = auth(rule(), keys=StaticKeys(by_uri=sets))
    calls = parses = 0
    real, real_parse = engine_module.verify_signature, engine_module.parse_token

    def counting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args)

    def counting_parse(*args: Any) -> Any:
        nonlocal parses
        parses += 1
        return real_parse(*args)

    engine_module.verify_signature = counting  # type: ignore[assignment]
    engine_module.parse_token = counting_parse  # type: ignore[assignment]
    try:
        for _ in range(3):
            assert fail(a.authenticate(view(headers=bearer(forged)), NOW)).body == \
                "Jwt verification fails"
        assert calls == 1  # verified once, then refused from the rejection cache
        assert parses == 1  # ... with the token parsed once
        # The checks before the signature still run on every request, in Envoy's
        # order: once the forgery's exp has passed it is "expired", like a fresh one.
        later = NOW + 3600 + 61
        assert fail(a.authenticate(view(headers=bearer(forged)), later)).body == \
            "Jwt is expired"
        assert (calls, parses) == (1, 1)
        sets[URI] = parse_jwks(jwks(other.jwk()))  # rotated to the forger's key
        ok(a.authenticate(view(headers=bearer(forged)), NOW))
        assert calls == 2  # a new key set is asked again
    finally:
        engine_module.verify_signature = real  # type: ignore[assignment]
        engine_module.parse_token = real_parse  # type: ignore[assignment]


def test_a_verified_token_builds_its_result_once() -> None:
    token = KEY.sign(claims())
    a = auth(rule(output_payload_to_header="x-payload"))
    first = ok(a.authenticate(view(headers=bearer(token)), NOW))
    again = ok(a.authenticate(view(headers=bearer(token)), NOW + 1))
    assert again is first and a.cache.hits == 1  # same cached Jwt, same place: same result
    other = ok(a.authenticate(view(headers=bearer(KEY.sign(claims(sub="bob")))), NOW))
    assert other is not first and other.principal != first.principal


# -- Istio integration scenarios (reference E) with Istio's own tokens ---------------

@pytest.fixture
def istio_samples() -> None:
    require_samples()


needs_samples = pytest.mark.usefixtures("istio_samples")
ISTIO_URI = "https://jwt.example/jwks"


def istio_keys() -> StaticKeys:
    return StaticKeys(by_uri={ISTIO_URI: parse_jwks((COMMON / "jwks.json").read_text())})


def policies(text: str) -> RequestAuthnPolicies:
    return RequestAuthnPolicies.from_resources(parse_text(text.replace("JWKS", ISTIO_URI), "t"))


AUTHN_ONLY = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: b, namespace: foo}
spec:
  selector: {matchLabels: {app: b}}
  jwtRules:
  - issuer: "test-issuer-1@istio.io"
    jwksUri: "JWKS"
    outputPayloadToHeader: "x-test-payload"
    outputClaimToHeaders:
    - {header: "x-jwt-iss", claim: "iss"}
    - {header: "x-jwt-iat", claim: "iat"}
    - {header: "x-jwt-nested-claim", claim: "nested.nested-2.key2"}
  - issuer: "test-issuer-2@istio.io"
    jwksUri: "JWKS"
    outputPayloadToHeader: "x-test-payload"
"""


@needs_samples
def test_istio_authn_only() -> None:
    a = Authenticator(policies(AUTHN_ONLY), istio_keys())
    b = {"app": "b"}
    t1 = sample("TokenIssuer1")
    res = ok(a.authenticate(view(headers=bearer(t1), labels=b), NOW))
    hdrs = {h.name: h.value for h in res.upstream_headers}
    assert hdrs == {"x-test-payload": t1.split(".")[1], "x-jwt-iss": "test-issuer-1@istio.io",
                    "x-jwt-iat": "1562182722"}
    assert "authorization" in res.upstream_headers_to_remove
    ok(a.authenticate(view(headers=bearer(sample("TokenIssuer2")), labels=b), NOW))
    assert fail(a.authenticate(view(headers=bearer(sample("TokenExpired")), labels=b),
                               NOW)).status == 401
    nested = ok(a.authenticate(view(headers=bearer(sample("TokenIssuer1WithNestedClaims2"))
                                    | {"x-jwt-nested-claim": "value_to_be_replaced"},
                                    labels=b), NOW))
    hdrs = {h.name: h.value for h in nested.upstream_headers}
    assert hdrs["x-jwt-nested-claim"] == "valueC" and hdrs["x-jwt-iat"] == "1604008018"
    assert "x-jwt-nested-claim" not in nested.upstream_headers_to_remove
    # A workload the selector does not match: no rules, even a garbage token passes.
    ok(a.authenticate(view(headers=bearer("garbage"), labels={"app": "c"}), NOW))


AUD = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: part1, namespace: foo}
spec:
  jwtRules:
  - {issuer: "test-issuer-1@istio.io", jwksUri: "JWKS", audiences: ["foo"]}
  - {issuer: "test-issuer-2@istio.io", jwksUri: "JWKS", audiences: ["bar"]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: part2, namespace: foo}
spec:
  jwtRules:
  - {issuer: "test-issuer-2@istio.io", jwksUri: "JWKS"}
"""


@needs_samples
def test_istio_aud_policies_are_merged() -> None:
    a = Authenticator(policies(AUD), istio_keys())
    res = fail(a.authenticate(view(headers=bearer(sample("TokenIssuer1"))), NOW))
    assert (res.status, res.body) == (403, "Audiences in Jwt are not allowed")
    ok(a.authenticate(view(headers=bearer(sample("TokenIssuer1WithAud"))), NOW))
    ok(a.authenticate(view(headers=bearer(sample("TokenIssuer2"))), NOW))


HEADERS_PARAMS = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: p, namespace: foo}
spec:
  jwtRules:
  - issuer: "test-issuer-1@istio.io"
    jwksUri: "JWKS"
    fromHeaders:
    - {name: "x-jwt-token", prefix: "Value "}
    - {name: "auth-token", prefix: "Token "}
    fromParams: ["token", "secondary_token"]
"""


@needs_samples
def test_istio_headers_params() -> None:
    a = Authenticator(policies(HEADERS_PARAMS), istio_keys())
    t1, expired = sample("TokenIssuer1"), sample("TokenExpired")
    for q in (f"token={t1}", f"secondary_token={t1}", f"token={t1}&secondary_token={t1}"):
        assert ok(a.authenticate(view(query=q), NOW)).claims is not None
    assert ok(a.authenticate(view(query=f"token_value={t1}"), NOW)).claims is None
    fail(a.authenticate(view(query=f"token={t1}&secondary_token={expired}"), NOW))
    assert ok(a.authenticate(view(headers={"x-jwt-token": f"Value {t1}"}), NOW)).claims
    assert ok(a.authenticate(view(headers={"auth-token": f"Token {t1}"}), NOW)).claims
    assert ok(a.authenticate(view(headers={"auth-header-param": f"Bearer {t1}"}), NOW)).claims \
        is None


@needs_samples
def test_istio_space_delimited_and_root_namespace() -> None:
    text = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh, namespace: istio-system}
spec:
  jwtRules:
  - {issuer: "test-issuer-1@istio.io", jwksUri: "JWKS"}
  - {issuer: "test-issuer-2@istio.io", jwksUri: "JWKS", spaceDelimitedClaims: [custom_scope]}
"""
    a = Authenticator(policies(text), istio_keys())
    res = ok(a.authenticate(view(headers=bearer(
        sample("TokenIssuer2WithCustomScopeSpaceDelimitedScope")), namespace="any"), NOW))
    assert res.claims is not None and res.claims["custom_scope"] == ("admin", "user")
    res = ok(a.authenticate(view(headers=bearer(
        sample("TokenIssuer2WithSpaceDelimitedPermission")), namespace="other"), NOW))
    assert res.claims is not None and res.claims["permission"] == ("read", "write")


@needs_samples
def test_istio_invalid_jwks_placeholder() -> None:
    a = Authenticator(policies(HEADERS_PARAMS), StaticKeys())
    assert fail(a.authenticate(view(query=f"token={sample('TokenIssuer1')}"), NOW)).status == 401
    ok(a.authenticate(view(), NOW))


def test_rules_sorted_by_issuer_duplicates_kept() -> None:
    r_b, r_a1, r_a2 = rule("b"), rule("a", audiences=("x",)), rule("a")
    a = Authenticator([r_b, r_a1, r_a2], KEYS)
    assert [r.issuer for r in a.rules_for(view().scope)] == ["a", "a", "b"]
    ok(a.authenticate(view(headers=bearer(KEY.sign(claims(iss="a")))), NOW))


def test_replace_keeps_rules_hashable() -> None:
    r = rule()
    assert hash(replace(r, audiences=("a",))) != hash(r) or replace(r, audiences=("a",)) != r


def test_token_headers_are_where_tokens_are_looked_for_in_scope() -> None:
    from_header = rule(from_headers=(HeaderLocation("X-Jwt", "Bearer "),))
    cookie = rule("issuer-2", from_cookies=("session",))
    assert auth(from_header, cookie).token_headers(view().scope) == {"x-jwt", "cookie"}
    assert auth(rule()).token_headers(view().scope) == {"authorization"}
