"""Admin HTTP (aiohttp): /healthz, /readyz, /metrics, and with
``--enable-debug-endpoints`` ``POST /debug/explain``.

Bound to loopback by default: metrics and readiness details are for the pod's
own probes and a scraper the operator chooses, never for the network at large.
The same app fronts one server process or the ``--workers`` supervisor; each
answers through the small ``AdminSource`` protocol. Workers serve theirs on a
private Unix socket (``unix:PATH``) that only the supervisor reads.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from authz import __version__
from authz.config import format_address, parse_address
from authz.errors import ListenError

__all__ = ["MAX_DEBUG_BODY", "UNIX_PREFIX", "AdminServer", "AdminSource", "Explainer",
           "unix_path"]

UNIX_PREFIX = "unix:"


def unix_path(name: str) -> str:
    """``@name`` is Linux's abstract namespace (no file on disk), else a file path."""
    return "\0" + name[1:] if name.startswith("@") else name


class AdminSource(Protocol):
    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details for the /readyz body)."""
        ...

    async def metrics_text(self) -> bytes:
        """Prometheus text exposition of everything this source knows."""
        ...


Explainer = Callable[[bytes], Awaitable[tuple[int, bytes]]]
"""A request description (JSON) -> (HTTP status, JSON body) of its explanation."""
MAX_DEBUG_BODY = 64 * 1024
"""A request description is a URL, a few headers and a scope: far below this."""


class AdminServer:
    def __init__(self, source: AdminSource, explainer: Explainer | None = None) -> None:
        self._source = source
        self._explainer = explainer
        """Set only with ``--enable-debug-endpoints``: without it the route does not exist."""
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_DEBUG_BODY)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        if self._explainer is not None:
            app.router.add_post("/debug/explain", self.explain)
        return app

    async def explain(self, request: web.Request) -> web.Response:
        """Why one described request would get its answer (docs/testing-policies.md)."""
        assert self._explainer is not None
        status, body = await self._explainer(await request.read())
        return web.Response(status=status, body=body, content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive: the event loop answers. Readiness is a separate question."""
        return web.json_response({"status": "ok", "version": __version__})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, body = await self._source.readiness()
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        payload = await self._source.metrics_text()
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self, address: str) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        if address.startswith(UNIX_PREFIX):
            await web.UnixSite(self._runner, unix_path(address[len(UNIX_PREFIX):])).start()
            return
        host, port = parse_address(address, "--http-address")
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:  # asyncio's message repeats the address as a tuple
            await self.stop()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot bind admin address {format_address(host, port)} "
                              f"(--http-address): {reason}") from None
        self.port = port
        for addr in self._runner.addresses:  # the bound port when asked for port 0
            self.port = int(addr[1])
            break

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
