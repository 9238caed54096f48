"""Which HTTP/1.1 server the check front door runs on: a bare handler on each.

Each candidate answers every request with a fixed 200 (no decision: only the
transport costs), pinned to one CPU, with ``h2load --h1`` on the other CPU
(32 connections, keep-alive). The numbers are in docs/http-front-door.md.

- ``aiohttp``: an ``aiohttp.web`` handler (aiohttp is already a dependency);
- ``httptools-uvloop``: authz/http/protocol.py (the protocol the server uses) on uvloop;
- ``httptools-asyncio``: the same on asyncio's own loop (``--event-loop asyncio``).

Run: python bench/http_transports.py [--duration 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time

CANDIDATES = ("aiohttp", "httptools-uvloop", "httptools-asyncio")


def _serve(kind: str, port: int) -> None:
    if kind == "aiohttp":
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            return web.Response(body=b"", headers={"x-user": "alice"})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        import uvloop
        web.run_app(app, host="127.0.0.1", port=port, print=None,
                    loop=uvloop.new_event_loop(), access_log=None)
        return
    from authz.http.protocol import Connections, HttpRequest, HttpResponse

    ok = HttpResponse(200, (("x-user", "alice"),))

    def handler(request: HttpRequest) -> HttpResponse:
        return ok

    async def main() -> None:
        connections = Connections(handler)
        server = await asyncio.get_running_loop().create_server(
            connections.protocol, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    if kind == "httptools-uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def measure(kind: str, duration: float, connections: int, cpus: tuple[int, int]) -> float:
    port = _free_port()
    server = subprocess.Popen(["taskset", "-c", str(cpus[0]), sys.executable, __file__,
                               "--serve", kind, "--port", str(port)])
    try:
        _wait(port)
        out = subprocess.run(
            ["taskset", "-c", str(cpus[1]), "h2load", "--h1", "-c", str(connections), "-t", "1",
             "-D", f"{duration:g}", "--warm-up-time=1", f"http://127.0.0.1:{port}/envoy/x"],
            capture_output=True, text=True, check=True).stdout
        match = re.search(r"finished in .*?, ([\d.]+) req/s", out)
        if not match or "0 errored" not in out:
            raise RuntimeError(f"h2load output:\n{out}")
        return float(match.group(1))
    finally:
        server.terminate()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=CANDIDATES)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.port)
        return 0
    if not shutil.which("h2load"):
        print("h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 1
    cpus = sorted(os.sched_getaffinity(0))
    pinned = (cpus[0], cpus[-1])
    print(f"| transport | req/s (h2load --h1, {args.connections} connections, "
          f"{args.duration:g} s, best of {args.rounds}) |\n|---|---|")
    for kind in CANDIDATES:
        best = max(measure(kind, args.duration, args.connections, pinned)
                   for _ in range(args.rounds))
        print(f"| {kind} | {best:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
