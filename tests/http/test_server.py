"""The HTTP listener in the server: same snapshot, same decisions, same metrics (with a
transport label), readiness, and a drain that loses no request in progress."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.server import AuthzServer
from tests.server.conftest import HMAC_SECRET, JwksPolicy

StartServer = Callable[..., Awaitable[AuthzServer]]


def policies(tmp_path: Path, source: str) -> Path:
    """RequestAuthentication (claim ``sub`` to ``x-sub``) and a DENY of requests
    without a principal on ``/secure``."""
    path = tmp_path / "policies.json"
    path.write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": [
        {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
         "metadata": {"name": "ra", "namespace": "default"},
         "spec": {"jwtRules": [{"issuer": "i", "jwksUri": source,
                                "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "need-jwt", "namespace": "default"},
         "spec": {"action": "DENY", "rules": [{
             "from": [{"source": {"notRequestPrincipals": ["*"]}}],
             "to": [{"operation": {"paths": ["/secure*"]}}]}]}},
    ]}))
    return path


def token(sub: str = "alice") -> str:
    now = int(time.time())
    return jwt.encode({"iss": "i", "sub": sub, "iat": now, "exp": now + 600}, HMAC_SECRET,
                      algorithm="HS256", headers={"kid": "h"})


async def start(start_server: StartServer, tmp_path: Path, jwks_policy: JwksPolicy,
                **overrides: object) -> AuthzServer:
    return await start_server(policies(tmp_path, jwks_policy.source),
                              http_check_address="127.0.0.1:0", **overrides)


async def get(server: AuthzServer, path: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{server.http_check_port}{path}", headers=headers) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.text()


async def test_three_doors_decide_like_grpc(
        start_server: StartServer, tmp_path: Path, jwks_policy: JwksPolicy) -> None:
    server = await start(start_server, tmp_path, jwks_policy)
    good = {"authorization": f"Bearer {token()}"}
    status, headers, _ = await get(server, "/envoy/secure/a", good)
    assert status == 200
    assert headers["x-sub"] == "alice"
    assert headers["x-envoy-auth-headers-to-remove"] == "authorization"
    status, headers, body = await get(server, "/envoy/secure/a", {"authorization": "Bearer x.y.z"})
    assert status == 401 and body == "Jwt header is an invalid Base64url encoded"
    assert headers["www-authenticate"].startswith("Bearer realm=")
    assert (await get(server, "/envoy/secure/a"))[::2] == (403, "RBAC: access denied")
    assert (await get(server, "/envoy/open"))[0] == 200
    # nginx shows its own error page; the answer has no body to keep its connection.
    assert (await get(server, "/nginx", {"x-original-uri": "/secure/b", "host": "h"}))[::2] == (
        403, "")
    status, headers, _ = await get(server, "/nginx", {**good, "x-original-uri": "/secure/b"})
    assert status == 200 and headers["x-sub"] == "alice"
    assert "x-envoy-auth-headers-to-remove" not in headers
    assert (await get(server, "/traefik", {"x-forwarded-uri": "/secure"}))[0] == 403
    assert (await get(server, "/traefik", {**good, "x-forwarded-uri": "/secure"}))[0] == 200
    # The same request as a gRPC Check gets the same answer from the same snapshot.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        request = external_auth_pb2.CheckRequest()
        request.attributes.request.http.path = "/secure/a"
        response = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(request)
    assert response.denied_response.body == "RBAC: access denied"


async def test_metrics_count_each_transport(
        start_server: StartServer, tmp_path: Path, jwks_policy: JwksPolicy) -> None:
    server = await start(start_server, tmp_path, jwks_policy)
    for _ in range(3):
        await get(server, "/envoy/secure")
    await get(server, "/nowhere")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        await external_auth_pb2_grpc.AuthorizationStub(ch).Check(external_auth_pb2.CheckRequest())
    assert server._admin is not None
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{server._admin.port}/metrics") as r:
        text = await r.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("authz_check_requests_total", (
        ("decision", "deny"), ("reason", "rbac_denied"), ("status", "403"),
        ("transport", "http")))] == 3
    assert samples[("authz_check_requests_total", (
        ("decision", "allow"), ("reason", "allowed"), ("status", "200"),
        ("transport", "grpc")))] == 1
    assert samples[("authz_check_errors_total", (
        ("reason", "bad_request"), ("transport", "http")))] == 1
    assert samples[("authz_check_duration_seconds_count", (("transport", "http"),))] == 3
    assert samples[("authz_check_duration_seconds_count", (("transport", "grpc"),))] == 1


async def test_readyz_on_the_check_port_follows_readiness_and_drain(
        start_server: StartServer, tmp_path: Path, jwks_policy: JwksPolicy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("authz.server.DRAIN_IDLE", 10.0)  # the whole delay, not cut short
    server = await start(start_server, tmp_path, jwks_policy, drain_delay=1.0)
    assert (await get(server, "/readyz"))[0] == 200
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.05)
    assert (await get(server, "/readyz"))[0] == 503
    # Still answering checks during the drain delay, each on a connection it then closes.
    status, headers, _ = await get(server, "/envoy/open")
    assert status == 200 and headers["connection"] == "close"
    await stopping


@pytest.mark.parametrize("door", ["/nginx", "/traefik"])
async def test_nginx_and_traefik_allows_echo_the_token_header_grpc_keeps(
        door: str, start_server: StartServer, tmp_path: Path, jwks_policy: JwksPolicy) -> None:
    """A listed ``Authorization`` the decision keeps comes back in the answer, the
    request's own value, even when two requests share one memoized answer; one the
    decision removes (a verified token) does not."""
    server = await start(start_server, tmp_path, jwks_policy)
    answers = server.store.current.answers
    where = {"x-original-uri": "/open", "x-forwarded-uri": "/open"}
    seen = []
    for user in ("YWxpY2U6YQ==", "Ym9iOmI="):
        status, headers, _ = await get(server, door, {**where, "authorization": f"Basic {user}"})
        assert status == 200
        seen.append(headers.get("authorization"))
    assert seen == ["Basic YWxpY2U6YQ==", "Basic Ym9iOmI="]
    assert answers.hits >= 1  # the second request's decision and answer were the first's
    status, headers, _ = await get(server, door, where)
    assert status == 200 and "authorization" not in headers
    status, headers, _ = await get(server, door, {**where, "authorization": f"Bearer {token()}"})
    assert status == 200 and headers["x-sub"] == "alice"
    assert "authorization" not in headers
    # A CORS preflight keeps the token (jwt_authn lets it through untouched).
    status, headers, _ = await get(server, door, {
        **where, "x-original-method": "OPTIONS", "x-forwarded-method": "OPTIONS",
        "origin": "https://a.example", "access-control-request-method": "GET",
        "authorization": "Bearer anything"})
    assert status == 200 and headers["authorization"] == "Bearer anything"
    # Envoy's door removes nothing it is not told to, so it needs no echo.
    status, headers, _ = await get(server, "/envoy/open", {"authorization": "Basic YTpi"})
    assert status == 200 and "authorization" not in headers


async def test_stop_answers_requests_in_progress_and_refuses_new_connections(
        start_server: StartServer, tmp_path: Path, jwks_policy: JwksPolicy) -> None:
    server = await start(start_server, tmp_path, jwks_policy, drain_delay=0.0)
    port = server.http_check_port
    assert port is not None
    idle_reader, _idle = await asyncio.open_connection("127.0.0.1", port)
    partial = []
    for _ in range(5):  # requests whose headers have not all arrived when SIGTERM comes
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /envoy/open HTTP/1.1\r\nHost: a\r\n")
        partial.append((reader, writer))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.1)
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle: closed at once
    for _, writer in partial:
        writer.write(b"\r\n")
    for reader, _ in partial:
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in answer
    await asyncio.wait_for(stopping, 10)
    try:
        await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        pass
    else:
        raise AssertionError("the HTTP check port still accepts after stop")


async def test_scope_error_is_403_like_grpc(
        start_server: StartServer, tmp_path: Path, jwks_policy: JwksPolicy) -> None:
    server = await start(start_server, tmp_path, jwks_policy)
    status, _, body = await get(server, "/envoy/x", {"x-authz-labels": "broken"})
    assert status == 403 and body.startswith("authz: invalid scope:")
    status, _, _ = await get(server, "/nginx?labels=broken")
    assert status == 403


async def test_reload_applies_to_the_http_port(
        start_server: StartServer, tmp_path: Path, jwks_policy: JwksPolicy) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    policies(directory, jwks_policy.source)
    server = await start_server(directory, http_check_address="127.0.0.1:0",
                                watch_interval=0.0)
    assert (await get(server, "/nginx", {"x-original-uri": "/open"}))[0] == 200
    (directory / "more.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: close-open, namespace: default}\n"
        "spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/open]}\n")
    assert await server.reload()
    assert (await get(server, "/nginx", {"x-original-uri": "/open"}))[0] == 403


async def test_repeated_decision_reuses_its_answer_per_door(
        start_server: StartServer, tmp_path: Path, jwks_policy: JwksPolicy) -> None:
    from authz.http.frontdoors import Door, door_of
    from authz.http.protocol import HttpRequest

    server = await start(start_server, tmp_path, jwks_policy)
    service = server.service
    assert service is not None
    good = {"authorization": f"Bearer {token()}"}
    envoy = HttpRequest("GET", "/envoy/secure", good, "127.0.0.1", 1)
    nginx = HttpRequest("GET", "/nginx", {**good, "x-original-uri": "/secure"}, "127.0.0.1", 1)
    assert door_of(nginx.target) is Door.NGINX
    first, again = service.check_http(envoy), service.check_http(envoy)
    assert first is again and first.wire.startswith(b"HTTP/1.1 200 OK\r\n")
    other = service.check_http(nginx)
    assert b"x-envoy-auth-headers-to-remove" in first.wire
    assert b"x-envoy-auth-headers-to-remove" not in other.wire  # each door its own answer
