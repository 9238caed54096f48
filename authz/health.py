"""gRPC health with two changes to the stock asyncio servicer.

- Watch streams end once draining has told them NOT_SERVING, so open watchers
  do not hold a graceful shutdown for the whole grace period.
- Check remembers who polls it over one connection (Envoy's active health
  checker keeps its connection), so a drain can wait until each of them has
  been told NOT_SERVING instead of guessing from a lull in traffic: a quiet
  moment is not proof that a proxy has stopped routing here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer as _StockHealthServicer

__all__ = ["MAX_POLLERS", "HealthServicer"]

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
MAX_POLLERS = 256
"""Connections whose Check times are remembered; the oldest is forgotten first.
A forgotten poller only loses the drain's wait for it."""


@dataclass(frozen=True)
class _Poll:
    previous: float | None
    last: float

    def due(self) -> float | None:
        """When this poller should check again: its last check plus its interval."""
        if self.previous is None:
            return None
        return self.last + (self.last - self.previous)


class HealthServicer(_StockHealthServicer):  # type: ignore[misc]  # untyped base
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self._clock = clock
        self._polls: dict[str, _Poll] = {}
        self._told: set[str] = set()
        self.told_at: float | None = None
        """When the latest poller was told NOT_SERVING during a drain."""

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        peer, now = context.peer(), self._clock()
        self._polled(peer, now)
        try:
            return await super().Check(request, context)
        finally:
            self._answered(peer, now)

    def _polled(self, peer: str, now: float) -> None:
        previous = self._polls.pop(peer, None)
        self._polls[peer] = _Poll(previous.last if previous else None, now)
        if len(self._polls) > MAX_POLLERS:
            del self._polls[next(iter(self._polls))]

    def _answered(self, peer: str, now: float) -> None:
        if self._gracefully_shutting_down:
            self._told.add(peer)
            self.told_at = now

    def http_poll(self, peer: str) -> None:
        """A readiness poll answered on another port (the HTTP check port's
        ``/readyz``, which Envoy's HTTP health checker polls over a kept
        connection): the drain waits for these pollers too. Call it as the
        answer is given; ``peer`` names the connection."""
        now = self._clock()
        self._polled(peer, now)
        self._answered(peer, now)

    def untold_pollers(self, deadline: float) -> list[str]:
        """Pollers not told NOT_SERVING yet that should come back before
        ``deadline`` (on this servicer's clock: ``time.perf_counter``, like the
        server's Check timestamps). One-shot checkers (the kubelet opens a
        connection per probe) have no interval and are not waited for; nor is a
        poller overdue by more than a whole interval (it has gone)."""
        now = self._clock()
        waiting = []
        for peer, poll in self._polls.items():
            due = poll.due()
            if peer in self._told or due is None:
                continue
            if due <= deadline and now <= due + (poll.last - (poll.previous or poll.last)):
                waiting.append(peer)
        return waiting

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        condition: asyncio.Condition = self._server_watchers[request.service]
        self._watcher_count_by_service[request.service] += 1
        last = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(request.service, SERVICE_UNKNOWN)
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last = status
                    if self._gracefully_shutting_down and status == NOT_SERVING:
                        return  # the watcher knows; let the server finish draining
                    await condition.wait()
        finally:
            self._watcher_count_by_service[request.service] -= 1
            if self._watcher_count_by_service[request.service] == 0:
                del self._server_watchers[request.service]
                del self._watcher_count_by_service[request.service]
