"""TLS and mutual TLS on the HTTP check port: the same certificate files, reloads and
caller identity as the gRPC port (tests/server/test_tls.py), through Python's ssl."""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509

from authz.http.protocol import certificate_principal
from authz.server import AuthzServer
from authz.tls import CertificateReloader, TlsError, TlsFiles, read_material, ssl_context
from tests.ca import Issued, TestCA
from tests.server.test_tls import EDGE, EDGE_POLICY, Pki, pki, readyz, wait_for

__all__ = ["pki"]

StartServer = Callable[..., Awaitable[AuthzServer]]


def client_context(ca: TestCA, client: Issued | None = None, tmp: Path | None = None,
                   version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    if version is not None:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    if client is not None:
        assert tmp is not None
        cert, key = client.write(tmp, f"client-{client.serial}")
        ctx.load_cert_chain(cert, key)
    return ctx


def get(conn: http.client.HTTPSConnection, path: str) -> int:
    conn.request("GET", path, headers={"host": "example.com"})
    reply = conn.getresponse()
    reply.read()
    return reply.status


def served(port: int, ctx: ssl.SSLContext, path: str = "/envoy/",
           server_name: str | None = "localhost") -> tuple[int, int, str]:
    """(status of one check, serial of the certificate served, TLS version)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nhost: example.com\r\n"
                     "connection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        serial = x509.load_der_x509_certificate(der).serial_number
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
        return status, serial, str(conn.version())


def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """The handshake (or the first read after it, for TLS 1.3 client certificates)
    fails."""
    try:
        status, _, _ = served(port, ctx)
    except (ssl.SSLError, OSError, ValueError):  # ValueError: closed before any cert
        return True
    return status == 0


@pytest.fixture
def edge_policy(tmp_path: Path) -> Path:
    policy = tmp_path / "edge.yaml"
    policy.write_text(EDGE_POLICY)
    return policy


async def tls_http_server(start_server: StartServer, pki: Pki, *policies: Path,
                          mutual: bool = False) -> tuple[AuthzServer, int]:
    server = await start_server(
        *policies, http_check_address="127.0.0.1:0", tls_cert=str(pki.cert),
        tls_key=str(pki.key), tls_client_ca=str(pki.client_ca) if mutual else None)
    assert server.http_check_port is not None
    return server, server.http_check_port


async def test_the_http_check_port_speaks_tls_with_the_grpc_ports_certificate(
    start_server: StartServer, pki: Pki, edge_policy: Path
) -> None:
    _, port = await tls_http_server(start_server, pki, edge_policy)
    status, serial, _ = await asyncio.to_thread(served, port, client_context(pki.ca))
    assert status == 200
    assert format(serial, "x") == read_material(TlsFiles(str(pki.cert), str(pki.key))).serial
    # A client that sends no server name gets the same certificate.
    bare = client_context(pki.ca)
    bare.check_hostname = False
    status, _, _ = await asyncio.to_thread(served, port, bare, "/envoy/", None)
    assert status == 200
    # Plaintext on a TLS port is no request: the client reads nothing useful.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /envoy/ HTTP/1.1\r\nhost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert not answer.startswith(b"HTTP/1.1 200")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_below_1_2_is_refused_as_on_the_grpc_port(
    start_server: StartServer, pki: Pki
) -> None:
    _, port = await tls_http_server(start_server, pki)
    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
                          (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        _, _, got = await asyncio.to_thread(
            served, port, client_context(pki.ca, version=version))
        assert got == name
    assert await asyncio.to_thread(
        refused, port, client_context(pki.ca, version=ssl.TLSVersion.TLSv1_1))


async def test_mtls_requires_a_client_certificate_and_names_the_proxy(
    start_server: StartServer, pki: Pki, edge_policy: Path, tmp_path: Path
) -> None:
    """The proxy's certificate (SPIFFE id of namespace edge) selects edge's policy,
    which denies /secret, exactly as over gRPC; an XFCC the request carries (Envoy's
    own listener's identity) still wins."""
    _, port = await tls_http_server(start_server, pki, edge_policy, mutual=True)
    edge = client_context(pki.ca, pki.ca.client(EDGE), tmp_path)
    assert (await asyncio.to_thread(served, port, edge, "/envoy/secret"))[0] == 403
    assert (await asyncio.to_thread(served, port, edge, "/envoy/open"))[0] == 200
    other = client_context(pki.ca, pki.ca.client("spiffe://cluster.local/ns/shop/sa/gw"),
                           tmp_path)
    assert (await asyncio.to_thread(served, port, other, "/envoy/secret"))[0] == 200
    assert (await asyncio.to_thread(served, port, edge, "/nginx"))[0] == 200
    for stranger in (client_context(pki.ca),
                     client_context(pki.ca, TestCA("stranger").client(EDGE), tmp_path)):
        assert await asyncio.to_thread(refused, port, stranger)


async def test_tls_without_client_ca_never_asks_for_an_identity(
    start_server: StartServer, pki: Pki, edge_policy: Path, tmp_path: Path
) -> None:
    _, port = await tls_http_server(start_server, pki, edge_policy)
    edge = client_context(pki.ca, pki.ca.client(EDGE), tmp_path)
    assert (await asyncio.to_thread(served, port, edge, "/envoy/secret"))[0] == 200


async def test_rotation_reaches_new_handshakes_and_keeps_open_connections(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    server, port = await tls_http_server(start_server, pki, mutual=True)
    client = pki.ca.client(EDGE)
    ctx = client_context(pki.ca, client, tmp_path)
    _, first, _ = await asyncio.to_thread(served, port, ctx)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        assert await asyncio.to_thread(get, conn, "/envoy/") == 200
        opened = conn.sock
        fresh = pki.ca.server()
        pki.rotate(fresh)
        tls = server.tls
        assert tls is not None
        await wait_for(lambda: tls.reloads == 1)
        assert await asyncio.to_thread(get, conn, "/envoy/") == 200
        assert conn.sock is opened, "the connection opened before the rotation was dropped"
    finally:
        conn.close()
    _, second, _ = await asyncio.to_thread(served, port, ctx)
    assert first != second == fresh.serial
    assert (await readyz(server))["tls"]["reloads"] == 1


async def test_a_rotated_client_ca_no_longer_admits_the_old_one(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    """The handshake is switched to the newest context, verification store included:
    a CA removed from --tls-client-ca stops admitting clients at once."""
    server, port = await tls_http_server(start_server, pki, mutual=True)
    old_client = client_context(pki.ca, pki.ca.client(EDGE), tmp_path)
    assert (await asyncio.to_thread(served, port, old_client))[0] == 200
    successor = TestCA("successor CA")
    successor.write(tmp_path / "next-ca.crt").replace(pki.client_ca)
    tls = server.tls
    assert tls is not None
    await wait_for(lambda: tls.reloads == 1)
    assert await asyncio.to_thread(refused, port, old_client)
    new_client = client_context(pki.ca, successor.client(EDGE), tmp_path)
    assert (await asyncio.to_thread(served, port, new_client))[0] == 200


async def test_a_bad_replacement_keeps_serving_the_last_good_certificate(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    server, port = await tls_http_server(start_server, pki)
    _, first, _ = await asyncio.to_thread(served, port, client_context(pki.ca))
    pki.key.write_bytes(TestCA("other").server().key)  # a key from another pair
    tls = server.tls
    assert tls is not None
    await wait_for(lambda: tls.last_error is not None)
    status, serial, _ = await asyncio.to_thread(served, port, client_context(pki.ca))
    assert (status, serial) == (200, first)


def test_ssl_context_names_what_openssl_refuses(pki: Pki) -> None:
    material = read_material(TlsFiles(str(pki.cert), str(pki.key)))
    broken = material.__class__(**{**{f: getattr(material, f) for f in
                                      material.__dataclass_fields__}, "key": b"garbage"})
    with pytest.raises(TlsError, match="OpenSSL refused"):
        ssl_context(broken)


async def test_the_reloader_builds_ssl_contexts_only_once_asked(pki: Pki) -> None:
    reloader = CertificateReloader(TlsFiles(str(pki.cert), str(pki.key)), interval=0)
    assert reloader._read()[1] is None
    reloader.server_ssl_context()
    assert isinstance(reloader._read()[1], ssl.SSLContext)


def test_certificate_principal_prefers_the_uri_san(pki: Pki) -> None:
    def der(issued: Issued) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_pem_x509_certificate(issued.cert).public_bytes(Encoding.DER)

    assert certificate_principal(der(pki.ca.client(EDGE))) == EDGE
    assert certificate_principal(der(pki.ca.server())).startswith("CN=")
    assert certificate_principal(b"not a certificate") == ""
