"""The gRPC surface through a real channel: Check, health, reflection, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.server import AUTHORIZATION_SERVICE, AuthzServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check_request(**http: object) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    h = req.attributes.request.http
    h.method = str(http.get("method", "GET"))
    h.path = str(http.get("path", "/"))
    h.host = str(http.get("host", "example.com"))
    for k, v in dict(http.get("headers", {})).items():  # type: ignore[call-overload]
        h.headers[k] = v
    return req


async def test_check_allows_with_no_policies(channel: grpc.aio.Channel) -> None:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    resp = await stub.Check(check_request(headers={"authorization": "Bearer x"}))
    assert resp.status.code == grpc.StatusCode.OK.value[0]
    assert resp.WhichOneof("http_response") == "ok_response"


@pytest.mark.parametrize(
    "request_",
    [
        external_auth_pb2.CheckRequest(),  # no attributes at all
        check_request(headers={}),  # empty headers
        check_request(path="", host="", method=""),
    ],
    ids=["empty", "no-headers", "blank-fields"],
)
async def test_malformed_requests_get_a_well_formed_answer(
    channel: grpc.aio.Channel, request_: external_auth_pb2.CheckRequest
) -> None:
    resp = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(request_)
    assert resp.WhichOneof("http_response") == "ok_response"


async def test_bad_scope_labels_deny_closed(channel: grpc.aio.Channel) -> None:
    req = check_request()
    req.attributes.context_extensions["labels"] = "app"  # not k=v
    resp = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(req)
    assert resp.status.code != 0
    assert resp.denied_response.status.code == 403
    assert "invalid scope" in resp.denied_response.body


async def test_internal_error_is_a_grpc_error_not_a_crash(
    server: AuthzServer, channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("secret-token-value must not be logged")

    snapshot = server.store.current
    monkeypatch.setattr(type(snapshot), "evaluate_pending", boom)
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(check_request())
    assert info.value.code() == grpc.StatusCode.INTERNAL
    monkeypatch.undo()
    resp = await stub.Check(check_request())  # still serving
    assert resp.WhichOneof("http_response") == "ok_response"
    assert server.metrics.check_errors.labels("internal", "grpc")._value.get() == 1


@pytest.mark.parametrize("service", ["", AUTHORIZATION_SERVICE])
async def test_health_not_serving_until_ready(
    start_server: Callable[..., Awaitable[AuthzServer]], service: str
) -> None:
    server = await start_server(ready=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        req = health_pb2.HealthCheckRequest(service=service)
        assert (await health.Check(req)).status == NOT_SERVING
        await server.become_ready()
        assert (await health.Check(req)).status == SERVING


async def test_health_watch_sees_ready_then_draining(
    start_server: Callable[..., Awaitable[AuthzServer]],
) -> None:
    server = await start_server(ready=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        call = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service=AUTHORIZATION_SERVICE)
        )
        seen = [(await call.read()).status]
        await server.become_ready()
        seen.append((await call.read()).status)
        started = asyncio.get_running_loop().time()
        stopping = asyncio.create_task(server.stop())
        seen.append((await asyncio.wait_for(call.read(), 5)).status)
        await stopping
        # the stream ended after NOT_SERVING instead of holding the 5 s grace period
        assert asyncio.get_running_loop().time() - started < 2.0
        assert await call.code() == grpc.StatusCode.OK
    assert seen == [NOT_SERVING, SERVING, NOT_SERVING]


async def test_unknown_health_service_is_not_found(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="nope")
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask(**kw: str) -> reflection_pb2.ServerReflectionResponse:
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**kw)]))
        async for resp in call:
            return resp
        raise AssertionError("no reflection answer")

    listed = await ask(list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert {AUTHORIZATION_SERVICE, "grpc.health.v1.Health"} <= names
    desc = await ask(file_containing_symbol=AUTHORIZATION_SERVICE)
    assert desc.file_descriptor_response.file_descriptor_proto


async def test_undecodable_check_request_is_invalid_argument_one_line_no_traceback(
    server: AuthzServer, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture,
) -> None:
    raw = channel.unary_unary(f"/{AUTHORIZATION_SERVICE}/Check")  # bytes in, bytes out
    with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\x0a\xff\xff\xff\xff\x0f")  # field 1, a length past the end
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [(e["event"], e["log_level"], e["size"]) for e in logs] == [
        ("check_request_undecodable", "warning", 6)]
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert server.metrics.check_errors.labels("bad_request", "grpc")._value.get() == 1
    assert server.metrics.check_errors.labels("internal", "grpc")._value.get() == 0
    resp = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(check_request())
    assert resp.WhichOneof("http_response") == "ok_response"


async def test_reflection_is_served_as_v1_too(channel: grpc.aio.Channel) -> None:
    ask = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    # v1's messages are v1alpha's under another package: the same bytes on the wire.
    call = ask(iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                     reflection_pb2.ServerReflectionRequest(
                         file_containing_symbol="grpc.reflection.v1.ServerReflection")]))
    answers = [resp async for resp in call]
    names = {s.name for s in answers[0].list_services_response.service}
    assert {AUTHORIZATION_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    [proto] = answers[1].file_descriptor_response.file_descriptor_proto
    described = descriptor_pb2.FileDescriptorProto.FromString(proto)
    assert described.package == "grpc.reflection.v1"
    assert [s.name for s in described.service] == ["ServerReflection"]
