"""Instructions per Check, stage by stage, counted by cachegrind: a measure that does not drift.

On a shared VM the CPU's speed drifts by 20% between runs minutes apart, more
than most changes to the request path are worth. Instructions executed do not
drift: this runs our server in process under ``valgrind --tool=cachegrind``,
once with 10 requests and once with N + 10, and prints the difference per
request, for a growing prefix of the request path (each stage includes the
ones before it):

    view      CheckRequest -> RequestView (protobuf parse included)
    extract   + the token found in its header
    parse     + the token decoded (parse_token)
    verify    + its RS256 signature checked
    token     + everything Authenticator._verify does around them (caches, time)
    authn     + the whole authentication (outcome built)
    decide    + authorization and the Decision
    evaluate  + the decision cache (key, lookup, store)
    response  + the serialized CheckResponse (built once per decision)
    check     the whole AuthorizationService.Check

for ``fresh`` requests (each carrying a valid token the server has never seen),
``w1`` (one token repeated: a decision-cache hit from the second request) and
``paths`` (one token, a new path each request: a token-cache hit, a decision-cache
miss).
Also printed: simulated L1 instruction and data cache misses, which is where a
stage's real cost departs from its instruction count (a fresh token touches
much more code than a repeated one).

Under valgrind OpenSSL does not see every CPU extension (it takes its plain
SHA-256 and bignum code, not the SHA-NI and ADX paths), so hashing and RSA count
more instructions than they run natively; Python-level changes count true.
Needs ``valgrind`` (``apt-get install valgrind``). Each stage takes two runs of
~30-60 s.

Run: python bench/instructions.py [--requests 1000] [--stages check] [--kinds fresh w1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import workloads
from profile_check import run_token_stage, start

STAGES = ("view", "extract", "parse", "verify", "token", "authn", "decide", "evaluate",
          "response", "check")
BASE = 10
"""Requests in the baseline run: startup and the first requests cancel out."""


def one_token_many_paths(message: bytes, count: int) -> list[bytes]:
    from authz._proto.envoy.service.auth.v3 import external_auth_pb2

    out = []
    for i in range(count):
        request = external_auth_pb2.CheckRequest.FromString(message)
        request.attributes.request.http.path = f"/p/{i}"
        out.append(request.SerializeToString())
    return out


def child(stage: str, kind: str, count: int, data_file: Path) -> None:
    """Run ``count`` requests of ``kind`` through ``stage`` inside one server, then exit."""
    from authz._proto.envoy.service.auth.v3 import external_auth_pb2
    from authz.envoy.request_view import view_from_check_request
    from authz.envoy.response import response_bytes

    data = json.loads(data_file.read_text())
    payloads = [base64.b64decode(p) for p in data[kind]]
    payloads = payloads[:count] if kind in ("fresh", "paths") else payloads[:1] * count

    async def run() -> None:
        jwks = workloads.JwksServer(data["jwks"])
        with tempfile.TemporaryDirectory() as tmp:
            server = await start(workloads.write_policy(Path(tmp),
                                                        workloads.main_policy(jwks.uri)))
            service, snapshot = server.service, server.store.current
            assert service is not None
            auth = snapshot.authenticator
            now = time.time()
            requests = [external_auth_pb2.CheckRequest.FromString(p) for p in payloads]

            def view(r: external_auth_pb2.CheckRequest) -> Any:
                # With the snapshot's peer and scope parsers, as the server builds it.
                return view_from_check_request(r, "default", snapshot.peer, snapshot.scope)

            if stage == "check":
                for r in requests:
                    await service.Check(r, None)  # type: ignore[arg-type]
            elif stage in ("view", "extract", "parse", "verify", "token"):
                first = view(requests[0])
                provider = auth._plan(auth.rules_for(first.scope)).providers[0]
                assert auth.keys is not None
                keys = auth.keys.keys_for(provider.rule)
                for r in requests:
                    run_token_stage(stage, view(r), auth, provider, keys, now)
            elif stage == "authn":
                for r in requests:
                    auth.authenticate_until(view(r), now)
            elif stage == "decide":
                for r in requests:
                    snapshot.decide(view(r), now)
            elif stage == "evaluate":
                for r in requests:
                    snapshot.evaluate(view(r), now)
            elif stage == "response":
                for r in requests:
                    response_bytes(snapshot.evaluate(view(r), now))
            os._exit(0)  # no shutdown in the count

    asyncio.run(run())


_SUMMARY = re.compile(r"(I\s+refs|I1\s+misses|D1\s+misses):\s+([\d,]+)")


def counted(valgrind: str | None, stage: str, kind: str, count: int,
            data_file: Path) -> list[int]:
    """Instructions, I1 and D1 misses of one child run (zeros without valgrind: a dry
    run that only checks every stage still runs)."""
    command = [sys.executable, __file__, "--child", stage, kind, str(count), str(data_file)]
    if valgrind is None:
        subprocess.run(command, capture_output=True, check=True, timeout=120)
        return [0, 0, 0]
    out = subprocess.run(
        [valgrind, "--tool=cachegrind", "--cache-sim=yes", "--cachegrind-out-file=/dev/null",
         *command], capture_output=True, text=True, check=False)
    found = {m.group(1).split()[0]: int(m.group(2).replace(",", ""))
             for m in _SUMMARY.finditer(out.stderr)}
    if len(found) != 3:
        raise SystemExit(f"cachegrind run failed ({stage} {kind} {count}):\n{out.stderr[-3000:]}")
    return [found["I"], found["I1"], found["D1"]]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--kinds", nargs="+", default=["fresh", "w1"],
                        choices=["fresh", "w1", "paths"])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="valgrind runs at a time (each is single-threaded)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every stage without valgrind (counts print as 0)")
    args = parser.parse_args()
    valgrind = None if args.dry_run else shutil.which("valgrind")
    if valgrind is None and not args.dry_run:
        print("valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    keys = workloads.make_keys()
    made = workloads.token_workloads(keys, args.requests + BASE)
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "requests.json"
        data_file.write_text(json.dumps({
            "jwks": keys.jwks_document(),
            "fresh": [base64.b64encode(p).decode() for p in made["w2"].check_requests()],
            "w1": [base64.b64encode(p).decode() for p in made["w1"].check_requests()],
            "paths": [base64.b64encode(p).decode() for p in one_token_many_paths(
                made["w1"].check_requests()[0], args.requests + BASE)],
        }))
        runs = [(stage, kind, n) for kind in args.kinds for stage in args.stages
                for n in (BASE, BASE + args.requests)]
        with ThreadPoolExecutor(args.jobs) as pool:
            results = dict(zip(runs, pool.map(
                lambda run: counted(valgrind, *run, data_file), runs), strict=True))
    print(f"Per request, {args.requests} requests (cachegrind; each stage includes the ones "
          "above it)\n")
    print("| kind | stage | instructions | of which this stage | I1 misses | D1 misses |")
    print("|---|---|--:|--:|--:|--:|")
    for kind in args.kinds:
        before = 0.0
        for stage in args.stages:
            low, high = results[stage, kind, BASE], results[stage, kind, BASE + args.requests]
            ir, i1, d1 = ((h - lo) / args.requests for lo, h in zip(low, high, strict=True))
            step = ir - before
            print(f"| {kind} | {stage} | {ir:,.0f} | {step:,.0f} | {i1:,.0f} | {d1:,.0f} |")
            before = ir
    return 0


if __name__ == "__main__":
    sys.exit(main())
