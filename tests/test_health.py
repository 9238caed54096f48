"""The health servicer remembers who polls it, so a drain can wait for them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from grpc_health.v1 import health_pb2

from authz.health import MAX_POLLERS, HealthServicer

SERVICE = "envoy.service.auth.v3.Authorization"


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Context:
    """The one part of a ServicerContext that Check reads."""

    address: str

    def peer(self) -> str:
        return self.address


async def poll(health: HealthServicer, peer: str) -> int:
    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), Context(peer))
    return int(reply.status)


@pytest.fixture
async def health() -> HealthServicer:
    servicer = HealthServicer(clock=Clock())
    await servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return servicer


async def test_a_poller_on_a_kept_connection_is_waited_for_until_told(
        health: HealthServicer) -> None:
    clock = health._clock
    assert isinstance(clock, Clock)
    await poll(health, "ipv4:127.0.0.1:5000")
    clock.now += 1.0
    await poll(health, "ipv4:127.0.0.1:5000")  # every second: due back at 102
    await health.enter_graceful_shutdown()
    clock.now += 0.4
    assert health.untold_pollers(deadline=clock.now + 5) == ["ipv4:127.0.0.1:5000"]
    assert health.untold_pollers(deadline=clock.now + 0.5) == []  # not back before it
    clock.now += 0.6
    assert await poll(health, "ipv4:127.0.0.1:5000") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health.untold_pollers(deadline=clock.now + 5) == []
    assert health.told_at == clock.now


async def test_one_shot_checkers_and_gone_pollers_are_not_waited_for(
        health: HealthServicer) -> None:
    clock = health._clock
    assert isinstance(clock, Clock)
    for port in range(6000, 6003):  # the kubelet: a new connection per probe
        await poll(health, f"ipv4:127.0.0.1:{port}")
        clock.now += 1.0
    await poll(health, "ipv4:127.0.0.1:7000")
    clock.now += 1.0
    await poll(health, "ipv4:127.0.0.1:7000")
    await health.enter_graceful_shutdown()
    assert health.untold_pollers(deadline=clock.now + 5) == ["ipv4:127.0.0.1:7000"]
    clock.now += 2.5  # overdue by more than its interval: it has gone
    assert health.untold_pollers(deadline=clock.now + 5) == []


async def test_the_poller_table_is_bounded(health: HealthServicer) -> None:
    for port in range(MAX_POLLERS + 10):
        await poll(health, f"ipv4:127.0.0.1:{port}")
    assert len(health._polls) == MAX_POLLERS
    assert "ipv4:127.0.0.1:0" not in health._polls


async def test_http_readyz_pollers_are_waited_for_like_grpc_ones(
        health: HealthServicer) -> None:
    clock = health._clock
    assert isinstance(clock, Clock)
    health.http_poll("http:127.0.0.1:6000")
    clock.now += 1.0
    health.http_poll("http:127.0.0.1:6000")
    await health.enter_graceful_shutdown()
    clock.now += 0.4
    assert health.untold_pollers(deadline=clock.now + 5) == ["http:127.0.0.1:6000"]
    clock.now += 0.6
    health.http_poll("http:127.0.0.1:6000")  # answered 503 by the check port
    assert health.untold_pollers(deadline=clock.now + 5) == []
    assert health.told_at == clock.now
