"""An in-process server on ephemeral loopback ports, reached through a real gRPC channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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


HMAC_SECRET = b"secret-secret-secret-secret-secret!"
"""The key the ``jwks_policy`` JWKS publishes (kid ``h``, HS256), for minting test tokens."""


@dataclass(frozen=True)
class JwksPolicy:
    policy: Path
    source: str
    """The JWKS URI, as metrics label it."""


@pytest.fixture
async def jwks_policy(tmp_path: Path) -> AsyncIterator[JwksPolicy]:
    """A local JWKS server and a RequestAuthentication (issuer ``i``) that uses it."""
    import base64
    import json

    from aiohttp import web

    key = base64.urlsafe_b64encode(HMAC_SECRET).rstrip(b"=").decode()

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [{"kty": "oct", "k": key, "kid": "h",
                                             "alg": "HS256"}]})

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    source = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
    policy = tmp_path / "ra.json"
    policy.write_text(json.dumps({
        "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "ra", "namespace": "default"},
        "spec": {"jwtRules": [{"issuer": "i", "jwksUri": source}]},
    }))
    yield JwksPolicy(policy, source)
    await runner.cleanup()
