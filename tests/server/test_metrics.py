"""/metrics exposes the families operators alert on, parsed as Prometheus parses them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import jwt
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.server import AuthzServer


async def test_jwks_policy_and_check_families(
    start_server: Callable[..., Awaitable[AuthzServer]], tmp_path: Path
) -> None:
    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [
            {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldCE", "kid": "h",
             "alg": "HS256"},
        ]})

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({
        "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "ra", "namespace": "default"},
        "spec": {"jwtRules": [{"issuer": "i", "jwksUri": f"http://127.0.0.1:{port}/jwks"}]},
    }))
    try:
        server = await start_server(policy)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            req = external_auth_pb2.CheckRequest()
            req.attributes.request.http.headers["authorization"] = "Bearer not.a.jwt"
            resp = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req)
            assert resp.denied_response.status.code == 401
            good = jwt.encode({"iss": "i", "sub": "s"}, b"secret-secret-secret-secret-secret!",
                              algorithm="HS256", headers={"kid": "h"})
            req.attributes.request.http.headers["authorization"] = f"Bearer {good}"
            for _ in range(2):  # the second one is served from the verified-token cache
                resp = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req)
                assert resp.status.code == 0
        assert server._admin is not None
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{server._admin.port}/metrics"
        ) as r:
            text = await r.text()
    finally:
        await runner.cleanup()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    source = f"http://127.0.0.1:{port}/jwks"
    assert samples[("authz_jwks_fetches_total",
                    (("outcome", "updated"), ("source", source)))] == 1
    assert samples[("authz_jwks_keys", (("source", source),))] == 1
    assert 0 <= samples[("authz_jwks_key_set_age_seconds", (("source", source),))] < 60
    assert samples[("authz_policies_loaded", (("kind", "RequestAuthentication"),))] == 1
    assert samples[("authz_check_requests_total", (
        ("decision", "deny"), ("reason", "jwt_invalid"), ("status", "401")))] == 1
    assert samples[("authz_ready", ())] == 1
    assert samples[("authz_jwt_results_total", (("issuer", ""), ("outcome", "jwt_invalid")))] == 1
    assert samples[("authz_jwt_results_total", (("issuer", "i"), ("outcome", "verified")))] == 2
    assert samples[("authz_token_cache_lookups_total", (("result", "hit"),))] == 1
    assert ("authz_token_cache_entries", ()) in samples
