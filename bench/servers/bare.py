"""The ceiling: a bare ``grpc.aio`` Authorization servicer that always answers OK.

It does what any Python gRPC server must (HTTP/2, parse the CheckRequest,
serialize a CheckResponse) and nothing else, so our server's numbers divided
by these show what policy work costs on top of the transport.

It runs on asyncio's own event loop and gRPC's defaults, as the ceiling is defined;
``--event-loop uvloop`` gives the ceiling on the loop our server runs on by
default, which `make bench` measures beside it.

Run: python bench/servers/bare.py --grpc-address 127.0.0.1:9000 [--spin-us N]
                                  [--event-loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

import grpc
from google.rpc import status_pb2

from authz import eventloop
from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

OK = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=0), ok_response=external_auth_pb2.OkHttpResponse())


class Bare(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext[Any, Any]
                    ) -> external_auth_pb2.CheckResponse:
        return OK


class Spinning(Bare):
    """Bare plus ``seconds`` of busy Python per call: what handler time alone costs
    through the transport (docs/design/performance.md, "Where the time goes")."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext[Any, Any]
                    ) -> external_auth_pb2.CheckResponse:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        return OK


async def serve(address: str, servicer: external_auth_pb2_grpc.AuthorizationServicer) -> None:
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot listen on {address}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # What gRPC core read at import: bench/run.py's bare-tuned sets it (authz/grpc_env.py).
    print(f"listening on {address} ({eventloop.current_loop_name()} loop, "
          f"GRPC_EXPERIMENTS={os.environ.get('GRPC_EXPERIMENTS', '')})", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grpc-address", default="127.0.0.1:9000")
    parser.add_argument("--spin-us", type=float, default=0.0,
                        help="busy-wait this many microseconds in every Check")
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    servicer = Spinning(args.spin_us / 1e6) if args.spin_us > 0 else Bare()
    eventloop.run(lambda: serve(args.grpc_address, servicer), args.event_loop)


if __name__ == "__main__":
    main()
