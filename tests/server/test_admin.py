"""The admin port: liveness, readiness that follows the gRPC health, metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.server import AuthzServer


async def test_healthz_readyz_and_metrics(
    start_server: Callable[..., Awaitable[AuthzServer]],
) -> None:
    server = await start_server(ready=False)
    assert server._admin is not None
    base = f"http://127.0.0.1:{server._admin.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 503
        await server.become_ready()
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200
            body = await r.json()
            assert body["snapshot_version"] == 1
            assert body["event_loop"] == "asyncio"  # pytest-asyncio's loop
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            await external_auth_pb2_grpc.AuthorizationStub(ch).Check(
                external_auth_pb2.CheckRequest()
            )
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    checks = families["authz_check_requests"]
    assert any(
        s.labels == {"decision": "allow", "status": "200", "reason": "no_policy",
                     "transport": "grpc"} and s.value == 1
        for s in checks.samples
    )
    latency = families["authz_check_duration_seconds"]
    assert any(s.name.endswith("_count") and s.value == 1 for s in latency.samples)
