"""An in-process server on ephemeral loopback ports, reached through a real gRPC channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from authz.config import Settings
from authz.server import AuthzServer


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[AuthzServer]]]:
    started: list[AuthzServer] = []

    async def start(*policies: Path, ready: bool = True, **overrides: object) -> AuthzServer:
        settings = Settings(
            policy_paths=tuple(str(p) for p in policies),
            grpc_address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            grace_period=overrides.pop("grace_period", 5.0),  # type: ignore[arg-type]
            **overrides,  # type: ignore[arg-type]
        )
        server = AuthzServer(settings)
        await server.start()
        started.append(server)
        if ready:
            await server.become_ready()
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def server(start_server: Callable[..., Awaitable[AuthzServer]]) -> AuthzServer:
    return await start_server()


@pytest.fixture
async def channel(server: AuthzServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch
