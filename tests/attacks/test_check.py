"""The attack corpus through the server's Check, in process, over a real gRPC channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.authn.verify import Status
from authz.config import Settings
from authz.server import AuthzServer
from tests.attacks.corpus import Keys, attacks, controls, policy, query_attacks

KEYS = Keys.generate()
ATTACKS = attacks(KEYS)
QUERY_ATTACKS = query_attacks(KEYS)
CONTROLS = controls(KEYS)
BODIES = {s.value for s in Status} - {"OK"}


def check_request(headers: dict[str, str], path: str = "/r") -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.host, http.path, http.scheme = "GET", "api.example", path, "http"
    for name, value in headers.items():
        http.headers[name] = value
    return req


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[external_auth_pb2_grpc.AuthorizationStub]:
    (tmp_path / "ra.json").write_text(policy(KEYS))
    server = AuthzServer(Settings(policy_paths=(str(tmp_path / "ra.json"),),
                                  grpc_address="127.0.0.1:0", http_address="127.0.0.1:0",
                                  grace_period=2.0))
    await server.start()
    await server.become_ready()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            yield external_auth_pb2_grpc.AuthorizationStub(channel)
    finally:
        await server.stop()


async def answer(stub: external_auth_pb2_grpc.AuthorizationStub, headers: dict[str, str],
                 path: str = "/r") -> tuple[int, str]:
    """(HTTP status, body); a gRPC error fails the test where it happens."""
    resp = await stub.Check(check_request(headers, path))
    if resp.WhichOneof("http_response") == "ok_response":
        return 200, ""
    return resp.denied_response.status.code, resp.denied_response.body


async def test_controls_pass(stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
    for name, headers in CONTROLS.items():
        assert await answer(stub, headers) == (200, ""), name


async def test_every_attack_is_a_401_never_200_never_an_error(
        stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
    wrong = []
    for name, headers in ATTACKS.items():
        try:
            status, body = await answer(stub, headers)
        except grpc.aio.AioRpcError as exc:
            wrong.append(f"{name}: gRPC {exc.code().name}")
            continue
        if status != 401 or body not in BODIES:
            wrong.append(f"{name}: {status} {body!r}")
    for name, path in QUERY_ATTACKS.items():
        status, body = await answer(stub, {}, path)
        if status != 401:
            wrong.append(f"{name}: {status} {body!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("name", "body"), [
    ("deep-nesting-header", "Jwt header is an invalid JSON"),
    ("deep-nesting-objects", "Jwt header is an invalid JSON"),
    ("deep-nesting-claims", "Jwt payload is an invalid JSON"),
    ("duplicate-alg", "Jwt header is an invalid JSON"),
    ("duplicate-iss-last-right", "Jwt payload is an invalid JSON"),
    ("crit-unknown", "Jwt header [crit] names an unsupported extension"),
    ("alg-none-with-signature", "Jwt header [alg] is not supported"),
    ("hs256-with-public-key-pem", "Jwks doesn't have key to match kid or alg from Jwt"),
    ("cross-issuer-a-key-b-kid", "Jwt verification fails"),
    ("claim-header-crlf", "Jwt claim is not a valid header value"),
    ("jwe-5-parts", "Jwt is not in the form of Header.Payload.Signature with two dots "
                    "and 3 sections"),
])
async def test_answers_name_the_reason(
        stub: external_auth_pb2_grpc.AuthorizationStub, name: str, body: str) -> None:
    assert await answer(stub, ATTACKS[name]) == (401, body)


async def test_an_internal_error_while_authenticating_fails_closed(
        stub: external_auth_pb2_grpc.AuthorizationStub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever raises inside authentication ends as gRPC INTERNAL (Envoy: 403 with
    ``failure_mode_allow: false``), never an allow."""
    from authz.authn import engine

    def boom(*args: object, **kwargs: object) -> None:
        raise RecursionError("anything at all")

    monkeypatch.setattr(engine, "parse_token", boom)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(check_request(CONTROLS["good-a"]))
    assert info.value.code() == grpc.StatusCode.INTERNAL
