"""TLS and mutual TLS on the gRPC port: handshakes, reloads, the caller's identity."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.config import ConfigError, Settings
from authz.server import AuthzServer, run_server
from authz.tls import CertificateReloader, TlsError, TlsFiles, fingerprint, read_material
from tests.ca import Issued, TestCA
from tests.policies import deny_path

StartServer = Callable[..., Awaitable[AuthzServer]]

EDGE = "spiffe://cluster.local/ns/edge/sa/envoy"
# Namespace edge denies /secret; default has no policy (allow).
EDGE_POLICY = deny_path("/secret", name="no-secret", namespace="edge")


@dataclass
class Pki:
    ca: TestCA
    dir: Path
    cert: Path
    key: Path
    client_ca: Path

    def rotate(self, issued: Issued) -> None:
        """Replace the serving pair as a rename does: each file changes at once."""
        for data, target in ((issued.cert, self.cert), (issued.key, self.key)):
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = TestCA()
    cert, key = ca.server().write(tmp_path / "tls", "server")
    return Pki(ca, tmp_path / "tls", cert, key, ca.write(tmp_path / "tls" / "ca.crt"))


def check_request(path: str = "/", destination: str = "") -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.method = "GET"
    req.attributes.request.http.path = path
    req.attributes.request.http.host = "example.com"
    if destination:
        req.attributes.destination.principal = destination
    return req


def channel(port: int, ca: TestCA, client: Issued | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        ca.pem, client.key if client else None, client.cert if client else None)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                   options=[("grpc.ssl_target_name_override", "localhost")])


async def health(ch: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                       timeout=5)
    return int(reply.status)


def served_serial(port: int, ca: TestCA, client: Issued | None = None,
                  tmp: Path | None = None) -> tuple[int, str]:
    """(serial, TLS version) of the certificate a fresh handshake gets."""
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    ctx.set_alpn_protocols(["h2"])
    if client is not None and tmp is not None:
        cert, key = client.write(tmp, "probe-client")
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        from cryptography import x509

        return x509.load_der_x509_certificate(der).serial_number, str(conn.version())


async def admin_get(server: AuthzServer, path: str) -> str:
    assert server._admin is not None
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{server._admin.port}{path}") as r:
        return await r.text()


async def readyz(server: AuthzServer) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(await admin_get(server, "/readyz"))
    return body


async def metrics(server: AuthzServer) -> str:
    return await admin_get(server, "/metrics")


@pytest.fixture
async def tls_server(start_server: StartServer, pki: Pki) -> AsyncIterator[AuthzServer]:
    yield await start_server(tls_cert=str(pki.cert), tls_key=str(pki.key))


# --- TLS ------------------------------------------------------------------------

async def test_tls_answers_checks_and_health(tls_server: AuthzServer, pki: Pki) -> None:
    async with channel(tls_server.grpc_port or 0, pki.ca) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING
        reply = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(check_request())
        assert reply.WhichOneof("http_response") == "ok_response"
    body = (await readyz(tls_server))["tls"]
    assert body["enabled"] is True and body["mutual"] is False
    assert body["certificate"]["names"] == ["localhost", "127.0.0.1", "::1"]
    assert body["certificate"]["expires_in_seconds"] > 3600 and body["last_error"] is None


async def test_plaintext_is_refused_on_a_tls_port(tls_server: AuthzServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_server.grpc_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_ca_fails(tls_server: AuthzServer) -> None:
    async with channel(tls_server.grpc_port or 0, TestCA("another")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def tls_handshake(port: int, version: ssl.TLSVersion) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as conn:
            return str(conn.version())
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {type(exc).__name__}"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_below_1_2_is_refused_and_1_2_and_1_3_are_accepted(
    tls_server: AuthzServer,
) -> None:
    """What docs/tls.md promises for the minimum version (gRPC core enforces it)."""
    port = tls_server.grpc_port or 0
    assert await asyncio.to_thread(tls_handshake, port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert await asyncio.to_thread(tls_handshake, port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    old = await asyncio.to_thread(tls_handshake, port, ssl.TLSVersion.TLSv1_1)
    assert old.startswith("refused"), old


# --- mutual TLS -----------------------------------------------------------------

@pytest.fixture
async def mtls_server(start_server: StartServer, pki: Pki,
                      tmp_path: Path) -> AsyncIterator[AuthzServer]:
    policy = tmp_path / "edge.yaml"
    policy.write_text(EDGE_POLICY)
    yield await start_server(policy, tls_cert=str(pki.cert), tls_key=str(pki.key),
                             tls_client_ca=str(pki.client_ca))


async def test_mtls_requires_a_client_certificate_from_the_ca(
    mtls_server: AuthzServer, pki: Pki
) -> None:
    port = mtls_server.grpc_port or 0
    async with channel(port, pki.ca, pki.ca.client()) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING
    for client in (None, TestCA("stranger").client()):
        async with channel(port, pki.ca, client) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health(ch)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    body = (await readyz(mtls_server))["tls"]
    assert body["mutual"] is True and body["client_ca"] == ["CN=authz test CA"]


async def test_envoys_certificate_names_the_workload_when_the_request_does_not(
    mtls_server: AuthzServer, pki: Pki
) -> None:
    """The client certificate's SPIFFE id selects namespace edge, whose policy denies
    /secret; a destination principal in the request itself still wins."""
    port = mtls_server.grpc_port or 0
    async with channel(port, pki.ca, pki.ca.client(EDGE)) as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        denied = await stub.Check(check_request("/secret"))
        assert denied.denied_response.status.code == 403
        assert (await stub.Check(check_request("/open"))).WhichOneof("http_response") == (
            "ok_response")
        own = await stub.Check(check_request(
            "/secret", destination="spiffe://cluster.local/ns/shop/sa/api"))
        assert own.WhichOneof("http_response") == "ok_response"
    other = pki.ca.client("spiffe://cluster.local/ns/shop/sa/envoy")
    async with channel(port, pki.ca, other) as ch:
        reply = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(check_request("/secret"))
        assert reply.WhichOneof("http_response") == "ok_response"


async def test_tls_without_client_certificates_never_guesses_an_identity(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    policy = tmp_path / "edge.yaml"
    policy.write_text(EDGE_POLICY)
    server = await start_server(policy, tls_cert=str(pki.cert), tls_key=str(pki.key))
    async with channel(server.grpc_port or 0, pki.ca, pki.ca.client(EDGE)) as ch:
        reply = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(check_request("/secret"))
    assert reply.WhichOneof("http_response") == "ok_response"


# --- reloads --------------------------------------------------------------------

async def wait_for(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_rotation_serves_the_new_certificate_and_keeps_open_connections(
    mtls_server: AuthzServer, pki: Pki, tmp_path: Path
) -> None:
    port, client = mtls_server.grpc_port or 0, pki.ca.client(EDGE)
    first, _ = await asyncio.to_thread(served_serial, port, pki.ca, client, tmp_path)
    assert mtls_server.tls is not None
    async with channel(port, pki.ca, client) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING
        fresh = pki.ca.server()
        pki.rotate(fresh)
        tls = mtls_server.tls
        await wait_for(lambda: tls.reloads == 1)
        # The connection opened before the rotation still answers.
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING
    second, _ = await asyncio.to_thread(served_serial, port, pki.ca, client, tmp_path)
    assert first != second == fresh.serial
    body = (await readyz(mtls_server))["tls"]
    assert body["reloads"] == 1 and body["certificate"]["serial"] == format(fresh.serial, "x")
    assert 'authz_tls_reloads_total{result="success"} 1.0' in await metrics(mtls_server)


async def test_a_bad_replacement_keeps_the_last_good_certificate(
    tls_server: AuthzServer, pki: Pki, tmp_path: Path
) -> None:
    port = tls_server.grpc_port or 0
    assert tls_server.tls is not None
    tls = tls_server.tls
    good, _ = await asyncio.to_thread(served_serial, port, pki.ca)
    # A key from another pair: a half-done rotation.
    pki.key.write_bytes(pki.ca.server().key)
    await wait_for(lambda: tls.last_error is not None)
    assert "does not belong to the certificate" in (tls.last_error or "")
    assert (await asyncio.to_thread(served_serial, port, pki.ca))[0] == good
    body = (await readyz(tls_server))
    assert body["ready"] is True and "does not belong" in body["tls"]["last_error"]
    assert 'authz_tls_reloads_total{result="failure"} 1.0' in await metrics(tls_server)
    # Garbage in the certificate file: still the last good one.
    pki.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    await wait_for(lambda: "no PEM certificate" in (tls.last_error or ""))
    assert (await asyncio.to_thread(served_serial, port, pki.ca))[0] == good
    # The rotation completes: served, error cleared.
    fresh = pki.ca.server()
    pki.rotate(fresh)
    await wait_for(lambda: tls.last_error is None)
    assert (await asyncio.to_thread(served_serial, port, pki.ca))[0] == fresh.serial


async def test_sighup_rereads_certificates(start_server: StartServer, pki: Pki) -> None:
    server = await start_server(tls_cert=str(pki.cert), tls_key=str(pki.key))
    assert server.tls is not None
    await server.tls.stop()  # no polling: only SIGHUP can notice
    fresh = pki.ca.server()
    pki.rotate(fresh)
    server._on_sighup()
    tls = server.tls
    await wait_for(lambda: tls.reloads == 1)
    assert (await asyncio.to_thread(served_serial, server.grpc_port or 0, pki.ca))[0] == (
        fresh.serial)


async def test_expiry_is_exported(tls_server: AuthzServer, pki: Pki) -> None:
    assert tls_server.tls is not None
    expected = tls_server.tls.material.not_after.timestamp()
    lines = [line for line in (await metrics(tls_server)).splitlines()
             if line.startswith("authz_tls_certificate_expiry_timestamp_seconds ")]
    assert lines and float(lines[0].split()[1]) == pytest.approx(expected)


# --- checking the files ---------------------------------------------------------

def test_read_material_names_each_problem(pki: Pki, tmp_path: Path) -> None:
    files = TlsFiles(str(pki.cert), str(pki.key), str(pki.client_ca))
    assert read_material(files).subject == "CN=localhost"
    cases: list[tuple[TlsFiles, str]] = [
        (TlsFiles(str(tmp_path / "nope.crt"), str(pki.key)), "--tls-cert"),
        (TlsFiles(str(pki.cert), str(pki.client_ca)), "not a PEM private key"),
        (TlsFiles(str(pki.cert), str(pki.key), str(pki.key)), "--tls-client-ca"),
    ]
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    cases.append((TlsFiles(str(empty), str(pki.key)), "empty file"))
    old_cert, old_key = pki.ca.server(
        not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3),
        valid_for=datetime.timedelta(days=1)).write(tmp_path, "old")
    cases.append((TlsFiles(str(old_cert), str(old_key)), "expired at"))
    future_cert, future_key = pki.ca.server(
        not_before=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    ).write(tmp_path, "future")
    cases.append((TlsFiles(str(future_cert), str(future_key)), "not valid before"))
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    cases.append((TlsFiles(str(pki.cert), str(locked)), "encrypted keys are not supported"))
    for files, message in cases:
        with pytest.raises(TlsError, match=message):
            read_material(files)


def test_errors_never_quote_the_key(pki: Pki, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(pki.ca.server().key)
    with pytest.raises(TlsError) as err:
        read_material(TlsFiles(str(pki.cert), str(other)))
    body = other.read_text().splitlines()[1]
    assert body not in str(err.value)


def test_fingerprint_follows_a_swapped_symlink(pki: Pki, tmp_path: Path) -> None:
    """A Secret volume swaps ``..data`` to a new folder; the file names stay."""
    mount = tmp_path / "mount"
    first, second = mount / "..2026_1", mount / "..2026_2"
    pki.ca.server().write(first, "tls")
    pki.ca.server().write(second, "tls")
    (mount / "..data").symlink_to(first.name)
    (mount / "tls.crt").symlink_to("..data/tls.crt")
    before = fingerprint([str(mount / "tls.crt")])
    (mount / "..data_tmp").symlink_to(second.name)
    (mount / "..data_tmp").replace(mount / "..data")
    assert fingerprint([str(mount / "tls.crt")]) != before


async def test_a_reloader_without_changes_keeps_its_configuration(pki: Pki) -> None:
    reloader = CertificateReloader(TlsFiles(str(pki.cert), str(pki.key)), interval=0)
    assert reloader._fetch() is None  # the initial configuration is already gRPC's
    assert await reloader.check() is True and reloader.reloads == 0
    pki.rotate(pki.ca.server())
    assert await reloader.check() is True and reloader.reloads == 1
    assert reloader._fetch() is not None and reloader._fetch() is None


# --- start-up -------------------------------------------------------------------

async def test_a_bad_certificate_at_start_binds_nothing(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(pki.ca.server().key)
    with pytest.raises(TlsError, match="does not belong"):
        await start_server(tls_cert=str(pki.cert), tls_key=str(other))


def test_run_server_exits_2_with_one_line(pki: Pki, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(pki.ca.server().key)
    code = run_server(Settings(grpc_address="127.0.0.1:0", http_address="",
                               tls_cert=str(pki.cert), tls_key=str(other)))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("authz: tls: --tls-key ")


@pytest.mark.parametrize("given, message", [
    ({"tls_cert": "a.crt"}, "--tls-cert and --tls-key go together"),
    ({"tls_key": "a.key"}, "--tls-cert and --tls-key go together"),
    ({"tls_client_ca": "ca.crt"}, "--tls-client-ca needs --tls-cert"),
])
def test_settings_refuse_half_a_configuration(given: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**given)  # type: ignore[arg-type]


def test_plaintext_stays_the_default() -> None:
    assert sys.modules["authz.config"].Settings().tls_cert is None


async def test_a_certificate_not_yet_valid_is_retried_unchanged(pki: Pki) -> None:
    """Issued on a host whose clock runs ahead: rejected, then served once its time
    comes, with no further change to the files."""
    reloader = CertificateReloader(TlsFiles(str(pki.cert), str(pki.key)), interval=0,
                                   retry_after=0.2)
    soon = pki.ca.server(
        not_before=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1.5))
    pki.rotate(soon)
    assert await reloader.check() is False
    assert "not valid before" in (reloader.last_error or "")
    deadline = asyncio.get_running_loop().time() + 10
    while reloader.reloads == 0:
        assert asyncio.get_running_loop().time() < deadline, reloader.last_error
        await asyncio.sleep(0.1)
        await reloader.check()
    assert reloader.material.serial == format(soon.serial, "x")
    assert reloader.last_error is None
