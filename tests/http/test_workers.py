"""``--workers N`` with ``--http-check-address``: every worker serves the HTTP check
port (SO_REUSEPORT), and SIGTERM drains it without losing a request in progress."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from authz.testing.ports import free_port
from tests.policies import deny_path
from tests.test_workers import Supervised, counter_total, decision_workers, supervised

__all__ = ["supervised"]


async def status_on_new_connection(port: int, path: str) -> int:
    connector = aiohttp.TCPConnector(force_close=True)  # one TCP connection per request
    async with aiohttp.ClientSession(connector=connector) as s, s.get(
            f"http://127.0.0.1:{port}/nginx", headers={"x-original-uri": path}) as r:
        return r.status


async def start(supervised: Callable[..., Awaitable[Supervised]], tmp_path: Path,
                *args: str) -> tuple[Supervised, int]:
    (tmp_path / "p.yaml").write_text(deny_path("/admin"))
    port = free_port()
    server = await supervised("--policy", str(tmp_path / "p.yaml"),
                              "--http-check-address", f"127.0.0.1:{port}", *args)
    return server, port


async def test_every_worker_answers_http_checks(
        supervised: Callable[..., Awaitable[Supervised]], tmp_path: Path) -> None:
    server, port = await start(supervised, tmp_path)
    statuses = await asyncio.gather(*(
        status_on_new_connection(port, "/admin" if i % 2 else "/") for i in range(40)))
    assert statuses == [200, 403] * 20
    for _ in range(50):  # decision lines are written in batches, within 50 ms
        if decision_workers(server.output()) == {0, 1}:
            break
        await asyncio.sleep(0.1)
    assert decision_workers(server.output()) == {0, 1}, "both workers answered"
    _, text = await server.get("/metrics")
    assert counter_total(text, "authz_check_requests") == 40
    assert 'transport="http"' in text


async def test_every_worker_serves_the_http_check_port_over_tls(
        supervised: Callable[..., Awaitable[Supervised]], tmp_path: Path) -> None:
    """Each worker loads the certificate files itself and shows its own state on
    /readyz; a check over TLS is answered whichever worker the kernel picks."""
    import json
    import ssl

    from tests.ca import TestCA

    ca = TestCA()
    cert, key = ca.server().write(tmp_path / "tls", "server")
    server, port = await start(supervised, tmp_path, "--tls-cert", str(cert),
                               "--tls-key", str(key))
    context = ssl.create_default_context(cadata=ca.pem.decode())

    async def status(path: str) -> int:
        connector = aiohttp.TCPConnector(force_close=True, ssl=context)
        async with aiohttp.ClientSession(connector=connector) as s, s.get(
                f"https://127.0.0.1:{port}/nginx", headers={"x-original-uri": path}) as r:
            return r.status

    statuses = await asyncio.gather(*(status("/admin" if i % 2 else "/") for i in range(20)))
    assert statuses == [200, 403] * 10
    _, text = await server.get("/readyz")
    workers = json.loads(text)["workers"]
    assert len(workers) == 2 and all(w["tls"]["enabled"] for w in workers), workers


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    return head + await reader.readexactly(length)


async def test_sigterm_drains_the_http_port_without_losing_requests(
        supervised: Callable[..., Awaitable[Supervised]], tmp_path: Path) -> None:
    server, port = await start(supervised, tmp_path, "--drain-delay", "1.5")
    # Requests whose headers are still arriving when SIGTERM comes, one per worker at least.
    partial = []
    for _ in range(8):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /nginx HTTP/1.1\r\nHost: a\r\nX-Original-URI: /admin\r\n")
        partial.append((reader, writer))
    answered = 0
    ready = True

    async def caller() -> None:
        """A proxy's view: keep checking on a keep-alive connection until the check
        port's /readyz says 503, reconnecting whenever an answer closes the connection."""
        nonlocal answered, ready
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while ready:
            writer.write(b"GET /nginx HTTP/1.1\r\nHost: a\r\nX-Original-URI: /\r\n\r\n")
            answer = await read_answer(reader)
            assert answer.startswith(b"HTTP/1.1 200 OK")
            answered += 1
            if b"connection: close" in answer:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    async def health() -> None:
        nonlocal ready
        while ready:
            await asyncio.sleep(0.05)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n")
            ready = (await read_answer(reader)).startswith(b"HTTP/1.1 200")
            writer.close()

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    checker = asyncio.create_task(health())
    await asyncio.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(checker, 10)
    await asyncio.wait_for(asyncio.gather(*callers), 10)
    assert answered > 0
    for _, writer in partial:
        writer.write(b"\r\n")
    for reader, _ in partial:
        answer = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 403 Forbidden") and b"connection: close" in answer
    assert await asyncio.wait_for(asyncio.to_thread(server.proc.wait), 20) == 0
    assert "Traceback" not in server.output()
