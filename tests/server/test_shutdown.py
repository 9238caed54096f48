"""Graceful shutdown: in-flight Checks finish, then the server stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.server import AUTHORIZATION_SERVICE as AUTHZ_SERVICE
from authz.server import AuthorizationService, AuthzServer


async def test_in_flight_checks_finish_within_grace(
    start_server: Callable[..., Awaitable[AuthzServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = asyncio.Event()
    original = AuthorizationService.Check

    async def slow_check(self: AuthorizationService, request: object, context: object) -> object:
        entered.set()
        await asyncio.sleep(0.5)
        return await original(self, request, context)  # type: ignore[arg-type]

    monkeypatch.setattr(AuthorizationService, "Check", slow_check)
    server = await start_server(grace_period=5.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        calls = [asyncio.ensure_future(stub.Check(external_auth_pb2.CheckRequest()))
                 for _ in range(5)]
        await entered.wait()
        await asyncio.sleep(0.05)
        await server.stop()
        results = await asyncio.gather(*calls)
    assert all(r.WhichOneof("http_response") == "ok_response" for r in results)


async def test_drain_delay_keeps_answering_while_not_serving(
    start_server: Callable[..., Awaitable[AuthzServer]],
) -> None:
    server = await start_server(drain_delay=3.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        await stub.Check(external_auth_pb2.CheckRequest())
        began = time.monotonic()
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.02)
        assert server.draining and not server.ready
        while time.monotonic() - began < 0.6:  # callers that have not moved away yet
            resp = await stub.Check(external_auth_pb2.CheckRequest())
            assert resp.WhichOneof("http_response") == "ok_response"
            await asyncio.sleep(0.03)
        await stopping
        # No Check for 100 ms: the delay ended early, long before its 3 s.
        assert time.monotonic() - began < 1.5
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Check(external_auth_pb2.CheckRequest(), timeout=1)



async def test_a_lull_does_not_end_the_drain_while_a_health_poller_is_untold(
    start_server: Callable[..., Awaitable[AuthzServer]],
) -> None:
    """A proxy that has not yet seen NOT_SERVING still routes here: quiet traffic
    must not end the drain before its health checker comes back and is told."""
    server = await start_server(drain_delay=5.0)
    target = f"127.0.0.1:{server.grpc_port}"
    request = health_pb2.HealthCheckRequest(service=AUTHZ_SERVICE)
    async with grpc.aio.insecure_channel(target) as poller:
        health = health_pb2_grpc.HealthStub(poller)
        await health.Check(request)
        await asyncio.sleep(0.8)
        await health.Check(request)  # one kept connection, every 0.8 s
        began = time.monotonic()
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.5)  # no Check at all: a lull
        assert not stopping.done()
        await asyncio.sleep(0.3)
        reply = await health.Check(request)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        told = time.monotonic()
        await stopping
    assert 0.7 < told - began < time.monotonic() - began < 1.8  # told, then 100 ms quiet
