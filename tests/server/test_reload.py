"""Hot reload: good changes take effect, bad ones change nothing and say why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from structlog.testing import capture_logs

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.policy.errors import PolicyErrors
from authz.server import AuthzServer
from tests.policies import deny_path

DENY_ADMIN = deny_path("%s", name="p")


def request(path: str) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.path = path
    return req


async def status(stub: external_auth_pb2_grpc.AuthorizationStub, path: str) -> int:
    resp = await stub.Check(request(path))
    return 200 if resp.status.code == 0 else int(resp.denied_response.status.code)


async def eventually(predicate: Callable[[], Awaitable[bool]], within: float = 2.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within}s")


async def test_file_edit_reloads_bad_edit_keeps_last_good(
    start_server: Callable[..., Awaitable[AuthzServer]], tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(DENY_ADMIN % "/admin")
    server = await start_server(policy)
    assert server._admin is not None
    readyz = f"http://127.0.0.1:{server._admin.port}/readyz"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch, \
            aiohttp.ClientSession() as http:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        assert await status(stub, "/admin") == 403
        assert await status(stub, "/ops") == 200

        policy.write_text(DENY_ADMIN % "/ops")

        async def ops_denied() -> bool:
            return await status(stub, "/ops") == 403 and await status(stub, "/admin") == 200

        await eventually(ops_denied)
        assert server.store.current.version == 2

        policy.write_text(DENY_ADMIN.replace("DENY", "DENYY") % "/x")

        async def error_reported() -> bool:
            async with http.get(readyz) as r:
                body = await r.json()
                return r.status == 200 and bool(body["last_reload_error"])

        await eventually(error_reported)
        async with http.get(readyz) as r:
            body = await r.json()
        assert f"{policy}:5" in body["last_reload_error"] and "spec.action" in body[
            "last_reload_error"]
        assert body["snapshot_version"] == 2 and body["ready"] is True
        assert await status(stub, "/ops") == 403  # last good snapshot still decides
        assert server.metrics.reloads.labels("failure")._value.get() >= 1

        policy.write_text(DENY_ADMIN % "/fixed")

        async def recovered() -> bool:
            return await status(stub, "/fixed") == 403

        await eventually(recovered)
        assert server.last_reload_error is None


async def test_in_flight_check_keeps_the_snapshot_it_started_with(
    start_server: Callable[..., Awaitable[AuthzServer]], tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(DENY_ADMIN % "/admin")
    server = await start_server(policy, watch_interval=0)
    first = server.store.current
    policy.write_text(DENY_ADMIN % "/other")
    assert await server.reload()
    assert server.store.current is not first and server.store.current.version == 2
    # the old object is untouched: a Check that read it still decides by it
    assert first.authorization.policies[0].rules[0].to is not None
    assert first.version == 1


async def test_reload_fetches_new_jwks_before_swap_and_releases_old(
    start_server: Callable[..., Awaitable[AuthzServer]], tmp_path: Path
) -> None:
    import json

    import jwt
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    hits: list[str] = []

    async def jwks(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"keys": [{**jwk, "kid": "k1", "alg": "ES256"}]})

    app = web.Application()
    app.router.add_get("/{name}", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]

    def ra(name: str) -> str:
        return json.dumps({
            "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": "ra", "namespace": "default"},
            "spec": {"jwtRules": [{"issuer": "iss",
                                   "jwksUri": f"http://127.0.0.1:{port}/{name}"}]}})

    policy = tmp_path / "p.json"
    policy.write_text(ra("first"))
    token = jwt.encode({"iss": "iss", "sub": "s"}, key, algorithm="ES256", headers={"kid": "k1"})
    req = request("/")
    req.attributes.request.http.headers["authorization"] = f"Bearer {token}"
    try:
        server = await start_server(policy, watch_interval=0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            stub = external_auth_pb2_grpc.AuthorizationStub(ch)
            assert (await stub.Check(req)).status.code == 0
            policy.write_text(ra("second"))
            assert await server.reload()
            # the very first Check on the new snapshot already has the new source's keys
            assert (await stub.Check(req)).status.code == 0
        sources = [s.source for s in server.jwks.status()]
        assert sources == [f"http://127.0.0.1:{port}/second"]  # the old one was released
        assert hits[:2] == ["/first", "/second"]
    finally:
        await runner.cleanup()


async def test_each_installed_snapshot_is_frozen_out_of_the_collector(
    start_server: Callable[..., Awaitable[AuthzServer]], tmp_path: Path
) -> None:
    import gc

    def collected(obj: object) -> bool:
        return any(o is obj for o in gc.get_objects())

    policy = tmp_path / "p.yaml"
    policy.write_text(DENY_ADMIN % "/admin")
    server = await start_server(policy)
    assert not collected(server.store.current.authorization)
    policy.write_text(DENY_ADMIN % "/ops")
    assert await server.reload()
    assert not collected(server.store.current.authorization)


async def test_an_emptied_file_keeps_the_last_good_policies_a_removed_one_does_not(
    start_server: Callable[..., Awaitable[AuthzServer]], tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(DENY_ADMIN % "/admin")
    server = await start_server(tmp_path, watch_interval=0.05, watch_settle=0.1)
    assert server._admin is not None
    readyz = f"http://127.0.0.1:{server._admin.port}/readyz"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch, \
            aiohttp.ClientSession() as http:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        policy.write_text("")  # `> p.yaml`: truncated, not meant as "no policies"

        async def error_reported() -> bool:
            async with http.get(readyz) as r:
                return bool((await r.json())["last_reload_error"])

        await eventually(error_reported)
        async with http.get(readyz) as r:
            body = await r.json()
        assert "empty" in body["last_reload_error"] and body["snapshot_version"] == 1
        assert await status(stub, "/admin") == 403  # never allowed in between

        policy.unlink()  # removing the file is deliberate: its policy goes

        async def removed() -> bool:
            return await status(stub, "/admin") == 200

        await eventually(removed)
        assert server.last_reload_error is None


async def test_a_reload_whose_files_change_during_the_read_is_read_again(
    start_server: Callable[..., Awaitable[AuthzServer]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(DENY_ADMIN % "/admin")
    server = await start_server(tmp_path, watch_interval=0, watch_settle=0.05)
    original = AuthzServer._compile
    reads: list[int] = []

    def compile_while_written(self: AuthzServer, version: int) -> object:
        reads.append(version)
        snapshot = original(self, version)
        if len(reads) == 1:  # the writer was not done: this read saw half a file
            policy.write_text(DENY_ADMIN % "/ops")
        return snapshot

    monkeypatch.setattr(AuthzServer, "_compile", compile_while_written)
    assert await server.reload()
    assert len(reads) == 2
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        assert await status(stub, "/ops") == 403 and await status(stub, "/admin") == 200


async def test_no_authorization_policy_is_said_loudly_at_start_on_reload_and_readyz(
    start_server: Callable[..., Awaitable[AuthzServer]], tmp_path: Path,
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(DENY_ADMIN % "/admin")
    with capture_logs() as logs:
        server = await start_server(tmp_path / "typo", ready=False)
        with pytest.raises(PolicyErrors):  # a missing path is an error, not allow-all
            server.load_policies()
        server = await start_server(policy)
        assert not [e for e in logs if e["event"] == "policies_allow_all"]
        ready, body = await server.readiness()
        assert body["policies"] == {"authorization": 1, "authentication": 0,
                                    "allow_all": False, "warnings": []}
        policy.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
        assert await server.reload()
    [warning] = [e for e in logs if e["event"] == "policies_allow_all"]
    assert warning["log_level"] == "warning" and "no AuthorizationPolicy" in warning["warning"]
    ready, body = await server.readiness()
    assert ready and body["policies"]["allow_all"] is True
    assert body["policies"]["warnings"] == [warning["warning"]]
