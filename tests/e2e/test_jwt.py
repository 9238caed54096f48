"""RequestAuthentication through real Envoy, compared with Envoy's own jwt_authn."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from authz.testing.ports import free_port
from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.jwt_rig import (
    JwksServer,
    Rule,
    SigningKey,
    ec_key,
    ed_key,
    envoy_jwt_filter,
    jwks_of,
    request_authentication,
    rsa_key,
)
from tests.e2e.rig import EchoUpstream, Envoy, Reply
from tests.shared_data import require_shared

pytestmark = pytest.mark.e2e

ISS_A, ISS_B = "https://issuer-a.example", "issuer-b@example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], sig: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()),
                     b64(sig)])


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    rs = rsa_key("rs-1")
    ps = rsa_key("ps-1", "PS256")
    return {"rs": rs, "ps": ps, "ec": ec_key("ec-1"), "ed": ed_key("ed-1"),
            "rogue": rsa_key("rs-1")}  # same kid as rs, different key: bad signature


@pytest.fixture
async def jwks_server(keys: dict[str, SigningKey]) -> AsyncIterator[JwksServer]:
    server = JwksServer(jwks_of(keys["rs"], keys["ps"], keys["ec"], keys["ed"]))
    await server.start()
    yield server
    await server.stop()


def token_cases(k: dict[str, SigningKey]) -> dict[str, tuple[dict[str, str], str]]:
    """name -> (headers, path) of one request."""
    now = int(time.time())
    good = {"iss": ISS_A, "sub": "alice", "aud": "api", "nested": {"key": "v1"}}
    rs = k["rs"]
    pem = rs.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = unsigned({"alg": "HS256", "kid": "rs-1", "typ": "JWT"}, good).rsplit(".", 1)[0]
    hs_confused = signing_input + "." + b64(
        hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    return {
        "rs256": (bearer(rs.mint(good)), "/r"),
        "es256": (bearer(k["ec"].mint(good)), "/r"),
        "ps256": (bearer(k["ps"].mint(good)), "/r"),
        "eddsa": (bearer(k["ed"].mint(good)), "/r"),
        "expired": (bearer(rs.mint({**good, "exp": now - 3600})), "/r"),
        "inside-skew": (bearer(rs.mint({**good, "exp": now - 20})), "/r"),
        "nbf-future": (bearer(rs.mint({**good, "nbf": now + 3600})), "/r"),
        "wrong-aud": (bearer(rs.mint({**good, "aud": "other"})), "/r"),
        "no-aud": (bearer(rs.mint({k2: v for k2, v in good.items() if k2 != "aud"})), "/r"),
        "unknown-issuer": (bearer(rs.mint({**good, "iss": "https://evil.example"})), "/r"),
        "bad-signature": (bearer(k["rogue"].mint(good)), "/r"),
        "alg-none": (bearer(unsigned({"alg": "none", "kid": "rs-1"}, good)), "/r"),
        "hs256-with-rsa-public-key": (bearer(hs_confused), "/r"),
        "unknown-kid": (bearer(rs.mint(good, kid="nope")), "/r"),
        "no-kid": (bearer(rs.mint(good, kid=None)), "/r"),
        "malformed": (bearer("abc.def"), "/r"),
        "garbage-after-bearer": ({"authorization": "Bearer !!!"}, "/r"),
        "basic-auth-is-no-token": ({"authorization": "Basic dXNlcjpwYXNz"}, "/r"),
        "query-param": ({}, f"/r?access_token={rs.mint(good)}&x=1"),
        "two-tokens-one-bad": (bearer(rs.mint(good)),
                               f"/r?access_token={rs.mint({**good, 'exp': now - 3600})}"),
        "no-token": ({}, "/r"),
        "spoofed-output-headers": ({**bearer(rs.mint(good)), "x-jwt-sub": "mallory",
                                    "x-jwt-payload": "forged"}, "/r"),
        "cors-preflight-expired": ({**bearer(rs.mint({**good, "exp": now - 3600})),
                                    "origin": "http://o.example",
                                    "access-control-request-method": "POST"}, "/r"),
        "custom-header": ({"x-token": f"Token {rs.mint(good)}"}, "/r"),
        "custom-param": ({}, f"/r?tok={rs.mint(good)}"),
        "custom-header-wrong-prefix": ({"x-token": f"Bearer {rs.mint(good)}"}, "/r"),
        "issuer-b": (bearer(rs.mint({**good, "iss": ISS_B})), "/r"),
    }


VARIANTS: dict[str, list[Rule]] = {
    "one-rule": [Rule(ISS_A, audiences=["api"], payload_header="x-jwt-payload",
                      claim_headers=[("x-jwt-sub", "sub"), ("x-jwt-nested", "nested.key")])],
    "custom-locations": [Rule(ISS_A, from_headers=[("x-token", "Token ")], from_params=["tok"],
                              forward=True)],
    "two-issuers": [Rule(ISS_B), Rule(ISS_A, audiences=["api"])],
}
COMPARED_HEADERS = ("authorization", "x-token", "x-jwt-sub", "x-jwt-nested", "x-jwt-payload")


def upstream_view(reply: Reply, envoy: Envoy) -> dict[str, Any]:
    if reply.upstream is None:
        realm = reply.headers.get("www-authenticate")
        return {"status": reply.status, "body": reply.body,
                "www-authenticate": realm and realm.replace(f"127.0.0.1:{envoy.port}", "HOST")}
    seen = reply.upstream["headers"]
    return {"status": reply.status, "path": reply.upstream["path"],
            **{h: seen.get(h) for h in COMPARED_HEADERS}}


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_same_answers_as_envoy_jwt_authn(
    variant: str, keys: dict[str, SigningKey], jwks_server: JwksServer,
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    tmp_path: Path,
) -> None:
    rules = VARIANTS[variant]
    policy = tmp_path / "ra.json"
    policy.write_text(request_authentication(rules, jwks_server.uri))
    authz = await start_authz(policy)
    ours = await start_envoy(authz.port, echo_upstream.port)
    reference = await start_envoy(free_port(), echo_upstream.port, wait_healthy=False,
                                  filters=[envoy_jwt_filter(rules, jwks_server.jwks)])
    differences = []
    for name, (headers, path) in token_cases(keys).items():
        method = "OPTIONS" if name.startswith("cors") else "GET"
        expected = upstream_view(await reference.send(method, path, headers), reference)
        got = upstream_view(await ours.send(method, path, headers), ours)
        if expected != got:
            differences.append(f"{name}:\n  envoy jwt_authn: {expected}\n  authz:           {got}")
    assert not differences, f"{variant}: {len(differences)} differences\n" + "\n".join(
        differences)


async def test_headline_istio_samples_401_200_403_and_claims(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    tmp_path: Path,
) -> None:
    samples = require_shared("conformance/istio-jwt-samples")
    jwks = JwksServer(json.loads((samples / "jwks.json").read_text()))
    await jwks.start()
    try:
        (tmp_path / "p.yaml").write_text(f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: foo}}
spec:
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: {jwks.uri}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: foo}}
spec:
  action: DENY
  rules:
  - from:
    - source: {{notRequestPrincipals: ["*"]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: groups, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  rules:
  - when:
    - key: request.auth.claims[groups]
      values: ["group1"]
""")
        from tests.e2e.rig import Route

        authz = await start_authz(tmp_path / "p.yaml")
        envoy = await start_envoy(authz.port, echo_upstream.port, [
            Route("/headers", {"namespace": "foo"}),
            Route("/httpbin/", {"namespace": "foo", "labels": "app=httpbin"}),
        ])
        demo = (samples / "demo.jwt").read_text().strip()
        groups = (samples / "groups-scope.jwt").read_text().strip()
        bad = await envoy.send("GET", "/headers", {"authorization": "Bearer deadbeef"})
        assert bad.status == 401
        assert bad.headers["www-authenticate"].endswith('error="invalid_token"')
        good = await envoy.send("GET", "/headers", {"authorization": f"Bearer {demo}"})
        assert good.status == 200 and good.upstream is not None
        assert "authorization" not in good.upstream["headers"]
        none = await envoy.send("GET", "/headers")
        assert (none.status, none.body) == (403, "RBAC: access denied")
        ok = await envoy.send("GET", "/httpbin/x", {"authorization": f"Bearer {groups}"})
        assert ok.status == 200
        denied = await envoy.send("GET", "/httpbin/x", {"authorization": f"Bearer {demo}"})
        assert denied.status == 403
    finally:
        await jwks.stop()


async def wait_for_status(envoy: Envoy, headers: dict[str, str], status: int,
                          within: float) -> float:
    start = time.monotonic()
    while True:
        reply = await envoy.send("GET", "/r", headers)
        if reply.status == status:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"still {reply.status}: {reply.body}"
        await asyncio.sleep(0.1)


async def test_key_rotation_is_picked_up_within_seconds(
    keys: dict[str, SigningKey], jwks_server: JwksServer, start_authz: StartAuthz,
    start_envoy: StartEnvoy, echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    (tmp_path / "ra.json").write_text(request_authentication([Rule(ISS_A)], jwks_server.uri))
    authz = await start_authz(tmp_path / "ra.json")
    envoy = await start_envoy(authz.port, echo_upstream.port)
    old = keys["rs"]
    old_token = {"authorization": f"Bearer {old.mint({'iss': ISS_A, 'sub': 'a'})}"}
    assert (await envoy.send("GET", "/r", old_token)).status == 200
    new = rsa_key("rs-2")
    jwks_server.jwks = jwks_of(new)  # the identity provider rotates: old key gone
    new_token = {"authorization": f"Bearer {new.mint({'iss': ISS_A, 'sub': 'a'})}"}
    took = await wait_for_status(envoy, new_token, 200, within=5.0)
    assert took < 5.0
    assert (await envoy.send("GET", "/r", old_token)).status == 401


async def test_jwks_down_at_start_then_recovers(
    keys: dict[str, SigningKey], jwks_server: JwksServer, start_authz: StartAuthz,
    start_envoy: StartEnvoy, echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    jwks_server.status = 503
    doc = json.loads(request_authentication([Rule(ISS_A)], jwks_server.uri))
    doc["spec"]["jwtRules"][0]["timeout"] = "1s"
    (tmp_path / "ra.json").write_text(json.dumps(doc))
    started = time.monotonic()
    authz = await start_authz(tmp_path / "ra.json")  # ready after the first attempt fails
    assert time.monotonic() - started < 30
    envoy = await start_envoy(authz.port, echo_upstream.port)
    token = {"authorization": f"Bearer {keys['rs'].mint({'iss': ISS_A, 'sub': 'a'})}"}
    reply = await envoy.send("GET", "/r", token)
    assert (reply.status, reply.body) == (401, "Jwks remote fetch is failed")
    assert (await envoy.send("GET", "/r")).status == 200  # no token: nothing to verify
    jwks_server.status = 200  # the provider comes back: backoff retries find it
    await wait_for_status(envoy, token, 200, within=20.0)
