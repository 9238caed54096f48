"""/metrics exposes the families operators alert on, parsed as Prometheus parses them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import grpc
import jwt
from prometheus_client.parser import text_string_to_metric_families

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.server import AuthzServer
from tests.server.conftest import HMAC_SECRET, JwksPolicy


async def test_jwks_policy_and_check_families(
    start_server: Callable[..., Awaitable[AuthzServer]], jwks_policy: JwksPolicy
) -> None:
    server = await start_server(jwks_policy.policy)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        req = external_auth_pb2.CheckRequest()
        req.attributes.request.http.headers["authorization"] = "Bearer not.a.jwt"
        resp = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req)
        assert resp.denied_response.status.code == 401
        good = jwt.encode({"iss": "i", "sub": "s"}, HMAC_SECRET,
                          algorithm="HS256", headers={"kid": "h"})
        req.attributes.request.http.headers["authorization"] = f"Bearer {good}"
        # The second is another path: the verified-token cache serves its token; the
        # third repeats it: the decision cache serves the whole answer.
        for path in ("/a", "/b", "/b"):
            req.attributes.request.http.path = path
            resp = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req)
            assert resp.status.code == 0
    assert server._admin is not None
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{server._admin.port}/metrics"
    ) as r:
        text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    source = jwks_policy.source
    assert samples[("authz_jwks_fetches_total",
                    (("outcome", "updated"), ("source", source)))] == 1
    assert samples[("authz_jwks_keys", (("source", source),))] == 1
    assert 0 <= samples[("authz_jwks_key_set_age_seconds", (("source", source),))] < 60
    assert samples[("authz_policies_loaded", (("kind", "RequestAuthentication"),))] == 1
    assert samples[("authz_check_requests_total", (
        ("decision", "deny"), ("reason", "jwt_invalid"), ("status", "401"),
        ("transport", "grpc")))] == 1
    assert samples[("authz_ready", ())] == 1
    assert samples[("authz_jwt_results_total", (("issuer", ""), ("outcome", "jwt_invalid")))] == 1
    assert samples[("authz_jwt_results_total", (("issuer", "i"), ("outcome", "verified")))] == 3
    assert samples[("authz_token_cache_lookups_total", (("result", "hit"),))] == 1
    assert samples[("authz_token_cache_entries", ())] == 1
    assert samples[("authz_decision_cache_lookups_total", (("result", "hit"),))] == 1
    assert samples[("authz_decision_cache_lookups_total", (("result", "miss"),))] == 3
    assert samples[("authz_decision_cache_entries", ())] == 3


async def test_in_flight_gauge_counts_a_check_while_it_runs(
    start_server: Callable[..., Awaitable[AuthzServer]]
) -> None:
    server = await start_server()
    service = server.service
    assert service is not None
    registry = server.metrics.registry
    seen: list[float | None] = []
    real = service._decide

    def decide(build_view: object) -> object:
        seen.append(registry.get_sample_value("authz_check_in_flight"))
        return real(build_view)  # type: ignore[arg-type]

    service._decide = decide  # type: ignore[assignment,method-assign]
    await service.Check(external_auth_pb2.CheckRequest(), None)  # type: ignore[arg-type]
    assert seen == [1.0]
    assert registry.get_sample_value("authz_check_in_flight") == 0.0
