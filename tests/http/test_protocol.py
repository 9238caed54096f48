"""The HTTP/1.1 transport on a real socket: keep-alive, pipelining, and every way a
client can misbehave gets a short answer (or a closed connection), never a traceback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from authz.http.protocol import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MAX_PENDING,
    Connections,
    HttpRequest,
    HttpResponse,
    encode_response,
)

SEEN: list[HttpRequest] = []
LATER: dict[str, asyncio.Future[None]] = {}
"""Deferred answers (``/later/<name>``) land when the test resolves their future."""
CANCELLED: list[str] = []


def echo(request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
    SEEN.append(request)
    if request.target == "/boom":
        raise RuntimeError("a bug")
    if request.target.startswith("/later/"):
        return deferred(request.target)
    return HttpResponse(200, (("x-target", request.target),), b"ok")


async def deferred(target: str) -> HttpResponse:
    """What ``check_http`` returns for a token whose keys are being fetched."""
    landed = LATER.setdefault(target, asyncio.get_running_loop().create_future())
    try:
        await landed
    except asyncio.CancelledError:
        CANCELLED.append(target)
        raise
    if target.endswith("/boom"):
        raise RuntimeError("a bug, later")
    if target.endswith("/cancel"):
        raise asyncio.CancelledError  # something it awaited was cancelled: a bug too
    return HttpResponse(200, (("x-target", target),), b"later")


def land(target: str) -> None:
    LATER.setdefault(target, asyncio.get_running_loop().create_future()).set_result(None)


class Server:
    def __init__(self, connections: Connections, server: asyncio.Server, port: int) -> None:
        self.connections, self.server, self.port = connections, server, port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    SEEN.clear()
    LATER.clear()
    CANCELLED.clear()
    connections = Connections(echo, header_timeout=0.4, idle_timeout=0.6, sweep_interval=0.05)
    srv = await asyncio.get_running_loop().create_server(connections.protocol, "127.0.0.1", 0)
    yield Server(connections, srv, srv.sockets[0].getsockname()[1])
    connections.abort_all()
    connections.stop()
    srv.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


async def test_keep_alive_and_pipelining_answer_in_order(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"".join(f"GET /r{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(20)))
    for i in range(20):
        status, headers, body = await read_response(reader)
        assert (status, headers["x-target"], body) == (200, f"/r{i}", b"ok")
        assert "connection" not in headers
    writer.write(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")  # still open
    assert (await read_response(reader))[1]["x-target"] == "/again"
    writer.close()


async def test_headers_are_lowercased_and_repeats_joined(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nCookie: c=1\r\n"
                 b"cookie: d=2\r\nContent-Length: 5\r\n\r\nhello")
    assert (await read_response(reader))[0] == 200
    seen = SEEN[-1]
    assert (seen.method, seen.target) == ("POST", "/x?y=1")
    assert seen.headers["x-a"] == "1,2" and seen.headers["cookie"] == "c=1; d=2"
    assert seen.peer_ip == "127.0.0.1"
    writer.close()


async def test_http10_and_connection_close_end_the_connection(server: Server) -> None:
    for request in (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"):
        reader, writer = await server.connect()
        writer.write(request)
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await closed(reader)
        writer.close()


async def test_head_gets_no_body(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"content-length: 2" in head
    _status, headers, _ = await read_response(reader)  # the next answer follows at once
    assert headers["x-target"] == "/next"
    writer.close()


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00",  # a TLS ClientHello on the plain port
])
async def test_malformed_requests_get_400_and_close(server: Server, garbage: bytes,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await server.connect()
    writer.write(garbage)
    status, headers, body = await read_response(reader)
    assert status == 400 and headers["connection"] == "close"
    assert body.startswith(b"authz: malformed")
    assert await closed(reader)
    assert "Traceback" not in caplog.text
    writer.close()


async def test_oversized_headers_get_431(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nx-big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 431 and headers["connection"] == "close"
    assert await closed(reader)
    assert SEEN == []


async def test_headers_just_under_the_limit_pass(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET / HTTP/1.1\r\nx-big: " + b"a" * (MAX_HEADER_BYTES - 1024) + b"\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_slow_headers_get_408(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and never the blank line
    for _ in range(3):
        await asyncio.sleep(0.1)
        writer.write(b"x-drip: 1\r\n")  # a byte now and then does not keep it open
    status, headers, _ = await read_response(reader)
    assert status == 408 and headers["connection"] == "close"
    assert await closed(reader)


async def test_idle_keep_alive_connection_is_closed(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert await closed(reader)  # after idle_timeout, without an answer
    assert not server.connections.open


async def test_body_larger_than_the_bound_gets_413(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(f"POST / HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode())
    status, headers, _ = await read_response(reader)
    assert status == 413 and headers["connection"] == "close"
    reader, writer = await server.connect()
    writer.write(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * 65536
    try:
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
    except ConnectionError:
        pass  # the server answered and closed while we were still sending
    status, _, _ = await read_response(reader)
    assert status == 413
    assert SEEN == []


async def test_small_body_is_read_and_dropped(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[1]["x-target"] == "/a"
    assert (await read_response(reader))[1]["x-target"] == "/b"
    writer.close()


async def test_handler_failure_is_500_and_the_connection_goes_on(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET /boom HTTP/1.1\r\n\r\nGET /fine HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[0] == 500
    assert (await read_response(reader))[1]["x-target"] == "/fine"
    writer.close()


async def test_upgrade_is_answered_and_closed(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await closed(reader)


async def test_drain_closes_idle_connections_and_answers_requests_in_progress(
        server: Server) -> None:
    idle_reader, idle_writer = await server.connect()
    busy_reader, busy_writer = await server.connect()
    busy_writer.write(b"GET /half HTTP/1.1\r\nHost: a\r\n")  # headers not complete yet
    await asyncio.sleep(0.05)
    server.server.close()
    server.connections.close_idle()
    assert await closed(idle_reader)
    busy_writer.write(b"\r\n")
    status, headers, _ = await read_response(busy_reader)
    assert status == 200 and headers["connection"] == "close"
    assert await closed(busy_reader)
    await asyncio.wait_for(server.connections.all_closed.wait(), 5)
    idle_writer.close()
    busy_writer.close()


def test_encode_response_utf8_values_and_close() -> None:
    data = encode_response(HttpResponse(401, (("x-name", "Zoë"),), b"no"), close=True)
    assert data == ("HTTP/1.1 401 Unauthorized\r\nx-name: Zoë\r\ncontent-length: 2\r\n"
                    "connection: close\r\n\r\nno").encode()


async def test_a_flood_of_connections_is_answered(server: Server) -> None:
    async def one(i: int) -> int:
        reader, writer = await server.connect()
        writer.write(f"GET /c{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        status, headers, _ = await read_response(reader)
        assert headers["x-target"] == f"/c{i}"
        writer.close()
        return status

    assert await asyncio.gather(*(one(i) for i in range(300))) == [200] * 300


def test_prepared_answer_is_the_keep_alive_encoding() -> None:
    from authz.http.protocol import prepared

    answer = prepared(HttpResponse(200, (("x-user", "alice"),)))
    assert answer.wire == encode_response(HttpResponse(200, (("x-user", "alice"),)), False)


def get(target: str, *extra: str) -> bytes:
    return "".join([f"GET {target} HTTP/1.1\r\nHost: a\r\n", *extra, "\r\n"]).encode()


async def test_a_deferred_answer_keeps_pipelined_answers_in_order(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(get("/a") + get("/later/x") + get("/b") + get("/c"))
    assert (await read_response(reader))[1]["x-target"] == "/a"
    await asyncio.sleep(0.1)
    assert [r.target for r in SEEN] == ["/a", "/later/x", "/b", "/c"]  # all decided...
    assert not await nothing_to_read(reader)  # ...but /b and /c wait behind /later/x
    assert server.connections.busy() == 1
    land("/later/x")
    answers = [await read_response(reader) for _ in range(3)]
    assert [(s, h["x-target"]) for s, h, _ in answers] == [
        (200, "/later/x"), (200, "/b"), (200, "/c")]
    assert answers[0][2] == b"later"
    assert server.connections.busy() == 0
    writer.write(get("/d"))  # the connection goes on
    assert (await read_response(reader))[1]["x-target"] == "/d"
    writer.close()


async def nothing_to_read(reader: asyncio.StreamReader) -> bool:
    """True if bytes arrive within 0.1 s."""
    try:
        await asyncio.wait_for(reader.read(1), 0.1)
    except TimeoutError:
        return False
    return True


async def test_deferred_answers_land_out_of_order_and_are_written_in_order(
        server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(get("/later/1") + get("/later/2") + get("/e"))
    await asyncio.sleep(0.05)
    land("/later/2")
    assert not await nothing_to_read(reader)
    land("/later/1")
    targets = [(await read_response(reader))[1]["x-target"] for _ in range(3)]
    assert targets == ["/later/1", "/later/2", "/e"]
    writer.close()


@pytest.mark.parametrize("failure", ["/later/boom", "/later/cancel"])
async def test_a_deferred_failure_is_500_in_its_place(server: Server, failure: str) -> None:
    reader, writer = await server.connect()
    writer.write(get(failure) + get("/f"))
    await asyncio.sleep(0.05)
    land(failure)
    assert (await read_response(reader))[0] == 500
    assert (await read_response(reader))[1]["x-target"] == "/f"
    writer.close()


async def test_a_deferred_answer_to_connection_close_closes_after_it(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(get("/a") + get("/later/y", "Connection: close\r\n") + get("/ignored"))
    await asyncio.sleep(0.05)
    land("/later/y")
    assert (await read_response(reader))[1]["x-target"] == "/a"
    status, headers, _ = await read_response(reader)
    assert (status, headers["x-target"], headers["connection"]) == (200, "/later/y", "close")
    assert await closed(reader)
    assert [r.target for r in SEEN] == ["/a", "/later/y"]


async def test_a_refusal_behind_a_deferred_answer_waits_its_turn(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(get("/later/z") + b"NOT HTTP AT ALL\r\n\r\n")
    await asyncio.sleep(0.05)
    assert not await nothing_to_read(reader)
    land("/later/z")
    assert (await read_response(reader))[1]["x-target"] == "/later/z"
    assert (await read_response(reader))[0] == 400
    assert await closed(reader)


async def test_reading_pauses_while_too_many_answers_wait(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(get("/later/head"))
    await asyncio.sleep(0.05)
    for i in range(MAX_PENDING + 10):  # one read each: the pause can act between them
        writer.write(get(f"/q{i}"))
        await writer.drain()
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)
    assert len(SEEN) == MAX_PENDING  # the head and MAX_PENDING - 1 behind it; no more read
    land("/later/head")
    targets = [(await read_response(reader))[1]["x-target"]
               for _ in range(MAX_PENDING + 11)]
    assert targets == ["/later/head", *(f"/q{i}" for i in range(MAX_PENDING + 10))]
    writer.close()


async def test_a_client_gone_cancels_its_deferred_answers(server: Server) -> None:
    _reader, writer = await server.connect()
    writer.write(get("/later/gone") + get("/g"))
    await asyncio.sleep(0.05)
    assert server.connections.busy() == 1
    writer.close()
    await asyncio.sleep(0.1)
    assert CANCELLED == ["/later/gone"]
    assert server.connections.busy() == 0 and not server.connections.open


async def test_drain_answers_deferred_requests_then_closes(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(get("/later/drain"))
    await asyncio.sleep(0.05)
    server.connections.close_idle()  # a request is pending: the connection stays
    assert server.connections.open
    land("/later/drain")
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "close")
    assert await closed(reader)
    await asyncio.wait_for(server.connections.all_closed.wait(), 5)
