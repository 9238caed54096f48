"""An independent gRPC client (buf curl, no proto files) against a real server.

Kubernetes' native gRPC probe and grpc_health_probe both make exactly the call
tested here: ``grpc.health.v1.Health/Check`` for a service name, success only on
SERVING.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from authz.server import AUTHORIZATION_SERVICE, AuthzServer

# make test installs buf into .tools/ and puts it on PATH; a plain pytest run finds it
# there too rather than skipping with buf installed.
BUF = shutil.which("buf") or next(
    (str(p) for p in [Path(__file__).resolve().parents[2] / ".tools" / "node_modules" / ".bin"
                      / "buf"] if p.is_file()), None)
pytestmark = pytest.mark.skipif(
    BUF is None, reason="buf not found (make test installs it with npm when npm exists)"
)


async def buf_curl(port: int, method: str, data: object | None = None, *args: str) -> str:
    argv = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args]
    if data is not None:
        argv += ["--data", json.dumps(data)]
    proc = await asyncio.create_subprocess_exec(
        *argv, f"http://127.0.0.1:{port}/{method}".rstrip("/"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.parametrize("service", ["", AUTHORIZATION_SERVICE])
async def test_health_check_like_kubernetes_probe(server: AuthzServer, service: str) -> None:
    out = await buf_curl(server.grpc_port or 0, "grpc.health.v1.Health/Check",
                         {"service": service})
    assert json.loads(out) == {"status": "SERVING"}


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_reflection_lists_services(server: AuthzServer, protocol: str) -> None:
    # Both reflection services: grpcurl and buf ask v1 first, older clients v1alpha only.
    out = await buf_curl(server.grpc_port or 0, "", None, "--list-methods",
                         "--reflect-protocol", protocol)
    assert f"{AUTHORIZATION_SERVICE}/Check" in out.split()
    assert "grpc.health.v1.Health/Check" in out.split()


async def test_check_through_reflection_returns_ok_http_response(server: AuthzServer) -> None:
    request = {"attributes": {"request": {"http": {
        "method": "GET", "path": "/x?y=1", "host": "h", "headers": {"authorization": "Bearer t"},
    }}}}
    out = await buf_curl(server.grpc_port or 0, f"{AUTHORIZATION_SERVICE}/Check", request)
    assert json.loads(out) == {"status": {}, "okResponse": {}}
