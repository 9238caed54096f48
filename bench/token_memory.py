"""What one cached token costs in memory, everything it keeps alive included.

Starts an in-process AuthzServer on the bench policy (JWKS served locally),
sends ``--tokens`` distinct valid tokens through ``AuthorizationService.Check``
twice (the second pass checks that nothing is rebuilt), and reports the growth
per token: Python objects (``tracemalloc``) and the process's resident memory
(protobuf keeps messages in its own arenas, which ``tracemalloc`` does not see).
A token's memory is its token-cache entry, its authn outcome, its Decision, its
serialized CheckResponse (claims metadata included) and its decision-cache entry.
docs/operations.md (Sizing) quotes it.

Run: python bench/token_memory.py [--tokens 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import tracemalloc
from pathlib import Path

import workloads
from profile_check import start

from authz._proto.envoy.service.auth.v3 import external_auth_pb2


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def measure(count: int) -> dict[str, float]:
    keys = workloads.make_keys()
    jwks = workloads.JwksServer(keys.jwks_document())
    requests = [external_auth_pb2.CheckRequest.FromString(p)
                for p in workloads.token_workloads(keys, count)["w2"].check_requests()]
    token_bytes = len(workloads.mint_tokens(keys, 1)[0])
    with tempfile.TemporaryDirectory() as tmp:
        server = await start(workloads.write_policy(Path(tmp), workloads.main_policy(jwks.uri)))
        service = server.service
        assert service is not None
        try:
            await service.Check(requests[0], None)  # type: ignore[arg-type]
            half = len(requests) // 2
            # Resident memory over the first half, Python objects over the second:
            # tracemalloc's own bookkeeping would count as resident memory.
            gc.collect()
            before_rss = rss_bytes()
            first = [await service.Check(r, None) for r in requests[:half]]  # type: ignore[arg-type]
            gc.collect()
            rss = (rss_bytes() - before_rss) / half
            tracemalloc.start()
            before_py = tracemalloc.get_traced_memory()[0]
            first += [await service.Check(r, None) for r in requests[half:]]  # type: ignore[arg-type]
            gc.collect()
            python = (tracemalloc.get_traced_memory()[0] - before_py) / (len(requests) - half)
            tracemalloc.stop()
            second = [await service.Check(r, None) for r in requests]  # type: ignore[arg-type]
            rebuilt = sum(a is not b for a, b in zip(first, second, strict=True))
        finally:
            await server.stop()
            jwks.stop()
    return {"tokens": count, "token_bytes": token_bytes,
            "python_bytes_per_token": python, "rss_bytes_per_token": rss,
            "rebuilt_on_second_pass": rebuilt}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=5000)
    args = parser.parse_args()
    result = asyncio.run(measure(args.tokens))
    print(f"{result['tokens']:,} distinct tokens of {result['token_bytes']} bytes: "
          f"{result['python_bytes_per_token'] / 1024:.1f} KiB of Python objects and "
          f"{result['rss_bytes_per_token'] / 1024:.1f} KiB of RSS per token; "
          f"responses rebuilt on a second pass: {result['rebuilt_on_second_pass']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
