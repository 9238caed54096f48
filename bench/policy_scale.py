"""Check cost vs. policies elsewhere: 10 policies in scope, with and without 10,000
policies in other namespaces (compiled snapshots are indexed by namespace).

Measures the server's whole request path minus the gRPC transport: parse the
serialized CheckRequest, build the view, evaluate the snapshot, get the serialized
CheckResponse (built once per decision). Run: python bench/policy_scale.py [--requests N]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.config import Settings
from authz.envoy.response import response_bytes
from authz.observe import Metrics
from authz.pipeline.snapshot import SnapshotStore, compile_snapshot
from authz.policy.load import parse_text
from authz.server import AuthorizationService

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p{i}, namespace: {ns}}}
spec:
  action: {action}
  selector: {{matchLabels: {{app: app{i}}}}}
  rules:
  - from:
    - source: {{notRequestPrincipals: ["*"], ipBlocks: ["10.{a}.0.0/16"]}}
    to:
    - operation: {{methods: ["GET", "POST"], paths: ["/api/{i}/*", "/v{i}/{{*}}/items"]}}
    when:
    - key: request.headers[x-tenant]
      values: ["t{i}", "shared"]
"""


def policies(namespace: str, count: int, offset: int = 0) -> str:
    return "---\n".join(
        POLICY.format(i=offset + i, ns=namespace, a=(offset + i) % 250,
                      action="DENY" if i % 2 else "ALLOW")
        for i in range(count)
    )


def request_bytes() -> bytes:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.host, http.path = "GET", "api.bench", "/api/3/orders?limit=10"
    for k, v in {"x-tenant": "shared", "user-agent": "bench", "accept": "*/*",
                 "x-request-id": "0f1e2d3c"}.items():
        http.headers[k] = v
    req.attributes.source.address.socket_address.address = "10.3.4.5"
    req.attributes.context_extensions["namespace"] = "bench"
    req.attributes.context_extensions["labels"] = "app=app3"
    return req.SerializeToString()


def measure(text: str, n: int) -> dict[str, float]:
    gc.collect()
    snapshot = compile_snapshot(parse_text(text, "bench.yaml"), 1)
    service = AuthorizationService(SnapshotStore(snapshot), Settings(), Metrics())
    payload = request_bytes()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        request = external_auth_pb2.CheckRequest.FromString(payload)
        _view, decision = service.decide(request)
        response_bytes(decision)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
        "mean_us": statistics.fmean(samples) * 1e6,
        "decision_status": float(decision.status),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--elsewhere", type=int, default=10000)
    args = parser.parse_args()
    in_scope = policies("bench", 10)
    small = measure(in_scope, args.requests)
    rss_small = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    big_text = in_scope + "---\n" + "---\n".join(
        policies(f"ns{j}", 10, offset=100 + j * 10) for j in range(args.elsewhere // 10))
    big = measure(big_text, args.requests)
    compile_s = time.perf_counter() - t0
    rss_big = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = big["mean_us"] / small["mean_us"]
    result = {"ten_in_scope": small, "plus_elsewhere": big, "elsewhere": args.elsewhere,
              "mean_ratio": ratio, "load_and_compile_seconds": compile_s,
              "peak_rss_mib": {"after_small": rss_small, "after_big": rss_big}}
    print("| policies | p50 µs | p99 µs | mean µs |\n|---|---|---|---|")
    print(f"| 10 in scope | {small['p50_us']:.1f} | {small['p99_us']:.1f} | "
          f"{small['mean_us']:.1f} |")
    print(f"| 10 in scope + {args.elsewhere} elsewhere | {big['p50_us']:.1f} | "
          f"{big['p99_us']:.1f} | {big['mean_us']:.1f} |")
    print(f"\nmean ratio {ratio:.3f} (target <= 1.20); load+compile of "
          f"{args.elsewhere + 10} policies {compile_s:.1f}s; peak RSS {rss_big:.0f} MiB")
    print(json.dumps(result), file=sys.stderr)
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
