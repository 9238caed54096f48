"""The attack corpus through the HTTP front doors, beside the gRPC Check of the same
server: every attack and control gets the same status and body either way, and no
attack is ever a 200 or a 5xx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from authz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz.config import Settings
from authz.http.protocol import MAX_HEADER_BYTES
from authz.server import AuthzServer
from tests.attacks.corpus import Keys, attacks, controls, policy, query_attacks
from tests.attacks.test_check import check_request

KEYS = Keys.generate()
CASES = {**{f"control {k}": (v, "/r") for k, v in controls(KEYS).items()},
         **{k: (v, "/r") for k, v in attacks(KEYS).items()},
         **{k: ({}, v) for k, v in query_attacks(KEYS).items()}}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AuthzServer]:
    (tmp_path / "ra.json").write_text(policy(KEYS))
    server = AuthzServer(Settings(policy_paths=(str(tmp_path / "ra.json"),),
                                  grpc_address="127.0.0.1:0", http_address="127.0.0.1:0",
                                  http_check_address="127.0.0.1:0", grace_period=2.0))
    await server.start()
    await server.become_ready()
    yield server
    await server.stop()


async def over_http(port: int, target: str, headers: dict[str, str]) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {target} HTTP/1.1", "Host: api.example", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


async def test_attacks_answer_alike_over_grpc_and_every_door(server: AuthzServer) -> None:
    port = server.http_check_port
    assert port is not None
    differences = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for name, (headers, path) in CASES.items():
            resp = await stub.Check(check_request(headers, path))
            expected = ((200, "") if resp.WhichOneof("http_response") == "ok_response"
                        else (resp.denied_response.status.code, resp.denied_response.body))
            size = sum(len(k) + len(v) + 4 for k, v in headers.items()) + len(path)
            if size > MAX_HEADER_BYTES:
                # Over Envoy's own header limit: a proxy refuses it before asking (431),
                # and so does the check port.
                expected = (431, "authz: request headers too large\n")
            doors = {
                "envoy": (f"/envoy{path}", headers),
                "nginx": ("/nginx", {**headers, "x-original-uri": path}),
                "traefik": ("/traefik", {**headers, "x-forwarded-uri": path}),
            }
            for door, (target, sent) in doors.items():
                got = await over_http(port, target, sent)
                want = expected
                if door == "nginx" and expected[0] in (401, 403):
                    # nginx shows its own error page: denies there carry no body.
                    want = (expected[0], "")
                if got != want:
                    differences.append(f"{name} via {door}: expected {want}, http {got}")
                if not name.startswith("control") and got[0] not in (401, 403, 431):
                    differences.append(f"{name} via {door}: {got[0]} is no denial")
    assert not differences, "\n".join(differences)
