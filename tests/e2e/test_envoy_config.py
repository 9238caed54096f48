"""An Envoy configured only by `authz envoy-config` enforces policies per route."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import aiohttp
import pytest

from authz.testing.ports import free_port
from authz.tools.envoy_config import RouteScope, bootstrap
from tests.e2e.conftest import StartAuthz
from tests.e2e.rig import EchoUpstream, Envoy, Process, envoy_binary, wait_until

pytestmark = pytest.mark.e2e


async def test_generated_bootstrap_end_to_end(
    start_authz: StartAuthz, echo_upstream: EchoUpstream, tmp_path: Path
) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy not found")
    (tmp_path / "p.yaml").write_text("""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-get, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - to:
    - operation: {methods: ["GET"]}
""")
    authz = await start_authz(tmp_path / "p.yaml")
    port, admin = free_port(), free_port()
    config = bootstrap(listener_port=port, listener_address="127.0.0.1", admin_port=admin,
                       authz_address=("127.0.0.1", authz.port),
                       upstream_address=("127.0.0.1", echo_upstream.port),
                       routes=[RouteScope("/shop/", "shop", {"app": "api"})],
                       health_check_interval=1.0)
    path = Path(tempfile.mkdtemp(prefix="envoy-")) / "bootstrap.json"
    path.write_text(json.dumps(config))
    process = Process("envoy", [binary, "-c", str(path), "--concurrency", "1",
                                "--base-id", str(port), "--disable-hot-restart"])
    envoy = Envoy(process, port, admin)
    try:
        async def healthy() -> bool:
            try:
                return await envoy.authz_healthy()
            except aiohttp.ClientError:
                return False

        await wait_until("envoy ready with authz healthy", healthy, process)
        assert (await envoy.send("GET", "/shop/orders")).status == 200
        denied = await envoy.send("POST", "/shop/orders")
        assert (denied.status, denied.body) == (403, "RBAC: access denied")
        assert (await envoy.send("POST", "/elsewhere")).status == 200  # default namespace
    finally:
        process.stop()
