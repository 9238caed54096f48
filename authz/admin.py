"""Admin HTTP (aiohttp): /healthz, /readyz, /metrics.

Bound to loopback by default: metrics and readiness details are for the pod's
own probes and a scraper the operator chooses, never for the network at large.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from authz import __version__
from authz.authn.jwks import describe
from authz.config import parse_address

if TYPE_CHECKING:
    from authz.server import AuthzServer


class AdminServer:
    def __init__(self, server: AuthzServer) -> None:
        self._server = server
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive: the event loop answers. Readiness is a separate question."""
        return web.json_response({"status": "ok", "version": __version__})

    async def readyz(self, request: web.Request) -> web.Response:
        server = self._server
        body: dict[str, Any] = {
            "ready": server.ready,
            "draining": server.draining,
            "snapshot_version": server.store.current.version,
            "last_reload_error": server.last_reload_error,
            "jwks": describe(server.jwks),
        }
        return web.json_response(body, status=200 if server.ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        payload = generate_latest(self._server.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self, address: str) -> None:
        host, port = parse_address(address, "--http-address")
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = port
        for addr in self._runner.addresses:  # the bound port when asked for port 0
            self.port = int(addr[1])
            break

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
