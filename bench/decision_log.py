"""What a decision line costs the request path: one write per line, or batched.

Logs N decisions in a tight loop through ``DecisionLog.emit``, JSON to a pipe that
a ``cat`` process drains (where a container's stderr goes), two ways:

- ``per-line``: structlog's ``WriteLogger``, a write and flush per line;
- ``batched``: ``JsonLineBatcher``, the same processors, writes of whole lines up
  to PIPE_BUF bytes.

Both render through ``observe.JSON_PROCESSORS``. The numbers are in
``authz/decision_log.py``; batching stays only while it saves at least 5 %.

Run: python bench/decision_log.py [--decisions N] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.decision import Decision, Reason
from authz.decision_log import DecisionLog, JsonLineBatcher
from authz.envoy.request_view import view_from_check_request
from authz.observe import configure_logging
from authz.request.view import RequestView


def a_view() -> RequestView:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.host, http.path, http.id = "GET", "api.example", "/orders/7", "r-1"
    http.headers["traceparent"] = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
    req.attributes.source.address.socket_address.address = "10.1.2.3"
    return view_from_check_request(req, "default")


async def ns_per_decision(log: DecisionLog, n: int) -> float:
    view = a_view()
    decision = Decision.deny(403, "RBAC: access denied", Reason.RBAC_DENIED,
                             policy="ns[default]-policy[p]-rule[0]")
    start = time.perf_counter()
    for _ in range(n):
        log.emit(view, decision, 0.000321)
    log.flush()
    return (time.perf_counter() - start) / n * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert drain.stdin is not None
    pipe = open(drain.stdin.fileno(), "w", buffering=1, closefd=False)  # noqa: SIM115
    out, sys.stderr = sys.stderr, pipe  # the loggers write to "stderr": the pipe
    try:
        configure_logging("json", "info")
        results: dict[str, list[float]] = {"per-line": [], "batched": []}
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both
            results["per-line"].append(asyncio.run(ns_per_decision(DecisionLog("all"),
                                                                   args.decisions)))
            results["batched"].append(asyncio.run(ns_per_decision(
                DecisionLog("all", batcher=JsonLineBatcher(pipe)), args.decisions)))
    finally:
        sys.stderr = out
        pipe.close()
        drain.stdin.close()
        drain.wait()
    medians = {name: statistics.median(xs) for name, xs in results.items()}
    for name, xs in results.items():
        print(f"{name:9s} median {medians[name]:7.0f} ns/decision  "
              f"(min {min(xs):.0f}, max {max(xs):.0f}, {args.repeats} runs)")
    saved = 1 - medians["batched"] / medians["per-line"]
    print(f"batching saves {saved:.0%} per decision")
    return 0


if __name__ == "__main__":
    sys.exit(main())
