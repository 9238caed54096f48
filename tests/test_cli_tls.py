"""`authz serve --tls-*` and `authz envoy-config --authz-tls-*` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.cli import build_parser, settings_from_args
from authz.testing.ports import free_port
from authz.tools.envoy_config import AuthzTls, bootstrap
from tests.ca import TestCA
from tests.tools.test_envoy_config import envoy_validate


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "authz", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_flags_and_their_env_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHZ_TLS_CERT", "/env/tls.crt")
    monkeypatch.setenv("AUTHZ_TLS_KEY", "/env/tls.key")
    monkeypatch.setenv("AUTHZ_TLS_CLIENT_CA", "/env/ca.crt")
    settings = settings_from_args(build_parser().parse_args(["serve", "--tls-cert", "/a.crt"]))
    assert (settings.tls_cert, settings.tls_key, settings.tls_client_ca) == (
        "/a.crt", "/env/tls.key", "/env/ca.crt")
    help_text = run("serve", "--help").stdout
    for name in ("--tls-cert", "--tls-key", "--tls-client-ca", "AUTHZ_TLS_CLIENT_CA"):
        assert name in help_text


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "a.crt"], "--tls-cert and --tls-key go together"),
    (["--tls-client-ca", "ca.crt"], "--tls-client-ca needs --tls-cert"),
])
def test_half_a_tls_configuration_is_a_usage_error(args: list[str], message: str) -> None:
    out = run("serve", "--workers", "1", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_certificate_that_cannot_serve_exits_2_with_one_line(
    tmp_path: Path, workers: str
) -> None:
    ca = TestCA()
    cert, _ = ca.server().write(tmp_path, "server")
    _, other_key = ca.server().write(tmp_path, "other")
    out = run("serve", "--workers", workers, "--grpc-address", f"127.0.0.1:{free_port()}",
              "--http-address", "", "--log-format", "json",
              "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("authz: tls:")]
    assert errors == [f"authz: tls: --tls-key {other_key} does not belong to the "
                      f"certificate in {cert}"], out.stderr
    assert "Traceback" not in out.stderr and "BEGIN" not in out.stderr + out.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_missing_certificate_file_exits_2_with_one_line(tmp_path: Path, workers: str) -> None:
    missing = tmp_path / "nope.crt"
    out = run("serve", "--workers", workers, "--grpc-address", f"127.0.0.1:{free_port()}",
              "--http-address", "", "--log-format", "json",
              "--tls-cert", str(missing), "--tls-key", str(tmp_path / "nope.key"))
    assert out.returncode == 2, out.stdout + out.stderr
    plain = [line for line in out.stderr.splitlines() if not line.startswith("{")]
    assert plain == [f"authz: tls: --tls-cert {missing}: No such file or directory"]


def readyz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            body: dict[str, Any] = json.loads(r.read())
            return body
    except (urllib.error.URLError, OSError):
        return None


def test_serve_with_mutual_tls_from_the_environment(tmp_path: Path) -> None:
    """Two workers, mutual TLS configured by AUTHZ_* only: the supervisor's /readyz
    shows the certificate, and a client with a certificate gets an answer."""
    ca = TestCA()
    cert, key = ca.server().write(tmp_path, "server")
    ca_file = ca.write(tmp_path / "ca.crt")
    client = ca.client()
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", "--workers", "2",
         "--grpc-address", f"127.0.0.1:{port}", "--http-address", f"127.0.0.1:{admin}",
         "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**__import__("os").environ, "AUTHZ_TLS_CERT": str(cert), "AUTHZ_TLS_KEY": str(key),
             "AUTHZ_TLS_CLIENT_CA": str(ca_file)})
    try:
        deadline = time.monotonic() + 60
        body = readyz(admin)
        while not (body and body["ready"]):
            assert proc.poll() is None and time.monotonic() < deadline, "authz did not start"
            time.sleep(0.2)
            body = readyz(admin)
        assert body["tls"]["mutual"] is True and body["tls"]["certificate"]["subject"] == (
            "CN=localhost")
        # Each worker's own view too: one of them may lag a rotation.
        assert [w["tls"]["certificate"]["subject"] for w in body["workers"]] == [
            "CN=localhost", "CN=localhost"]
        creds = grpc.ssl_channel_credentials(ca.pem, client.key, client.cert)
        with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[
                ("grpc.ssl_target_name_override", "localhost")]) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


# --- authz envoy-config --authz-tls-* ---------------------------------------------

def test_envoy_config_emits_an_upstream_tls_context(tmp_path: Path) -> None:
    out = run("envoy-config", "--upstream-address", "127.0.0.1:81",
              "--authz-address", "authz.authz.svc:9000", "--authz-tls-ca", "/tls/ca.crt",
              "--authz-tls-cert", "/tls/tls.crt", "--authz-tls-key", "/tls/tls.key",
              "--authz-tls-min-version", "1.3")
    assert out.returncode == 0, out.stderr
    clusters = {c["name"]: c for c in json.loads(out.stdout)["staticResources"]["clusters"]}
    socket_ = clusters["authz"]["transportSocket"]
    assert "transportSocket" not in clusters["upstream"]
    assert socket_["name"] == "envoy.transport_sockets.tls"
    context = socket_["typedConfig"]
    assert context["@type"].endswith("UpstreamTlsContext") and context["sni"] == (
        "authz.authz.svc")
    common = context["commonTlsContext"]
    assert common["alpnProtocols"] == ["h2"]
    assert common["tlsParams"]["tlsMinimumProtocolVersion"] == "TLSv1_3"
    assert common["validationContext"]["trustedCa"] == {"filename": "/tls/ca.crt"}
    assert common["validationContext"]["matchTypedSubjectAltNames"] == [
        {"sanType": "DNS", "matcher": {"exact": "authz.authz.svc"}}]
    assert common["tlsCertificates"] == [{"certificateChain": {"filename": "/tls/tls.crt"},
                                          "privateKey": {"filename": "/tls/tls.key"}}]


def test_envoy_config_matches_an_ip_san_without_sni() -> None:
    socket_ = AuthzTls(ca="/ca.crt", server_name="10.0.0.7").transport_socket()
    context = socket_["typedConfig"]
    assert "sni" not in context and "tlsCertificates" not in context["commonTlsContext"]
    assert context["commonTlsContext"]["validationContext"]["matchTypedSubjectAltNames"] == [
        {"sanType": "IP_ADDRESS", "matcher": {"exact": "10.0.0.7"}}]


@pytest.mark.parametrize("args, message", [
    (["--authz-tls-cert", "c", "--authz-tls-key", "k"], "need --authz-tls-ca"),
    (["--authz-tls-ca", "ca", "--authz-tls-cert", "c"], "--authz-tls-key go together"),
])
def test_envoy_config_refuses_half_a_tls_setup(args: list[str], message: str) -> None:
    out = run("envoy-config", "--upstream-address", "127.0.0.1:81", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_envoy_accepts_the_tls_bootstrap(tmp_path: Path) -> None:
    ca = TestCA()
    ca_file = ca.write(tmp_path / "ca.crt")
    cert, key = ca.client().write(tmp_path, "envoy")
    config = bootstrap(listener_port=8080, authz_address=("127.0.0.1", 9000),
                       upstream_address=("127.0.0.1", 8081),
                       authz_tls=AuthzTls(ca=str(ca_file), cert=str(cert), key=str(key),
                                          server_name="localhost"))
    envoy_validate(config, tmp_path)
