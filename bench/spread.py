"""Which of authz's ``--workers`` processes answer the Checks one Envoy sends.

The kernel spreads connections, not requests, over the processes sharing the port
(SO_REUSEPORT), and an Envoy worker thread with no limit keeps one HTTP/2
connection to a host: all of its Checks reach one authz process. This section runs
authz with ``--workers 2`` behind one Envoy, once with Envoy's connection defaults
and once with the limits ``authz envoy-config`` writes (streams and requests per
connection), and counts per worker process the Checks it answered (each worker's
own ``/metrics``, on the abstract Unix socket the supervisor reads), its CPU time
and its connections from Envoy (halfway through the run).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import workloads
from authorizers import start_envoy, start_ours
from context import TARGET_CONCURRENCY, Context, Server
from load import wrk_run
from procs import cpu_seconds, descendants, log

from authz.tools.envoy_config import REQUESTS_PER_CONNECTION, STREAMS_PER_CONNECTION

WORKERS = 2

CONFIGS: Mapping[str, Mapping[str, Any]] = {
    "Envoy defaults (no limit)": {"streams_per_connection": None,
                                  "requests_per_connection": None},
    f"{STREAMS_PER_CONNECTION} streams, {REQUESTS_PER_CONNECTION:,} requests per connection "
    "(authz envoy-config)": {},
    "http_service, HTTP/1.1 (authz envoy-config --transport http)": {"transport": "http"},
}
"""Envoy's authz cluster per row: gRPC as Envoy has it without limits, gRPC as
generated, and the HTTP front door as generated (run when authz has it)."""


def worker_sockets(supervisor: int) -> dict[int, str]:
    """Worker index -> abstract socket name of its admin app (``@authz-<pid>-...``)."""
    found: dict[int, str] = {}
    pattern = re.compile(rf"^@(authz-{supervisor}-\d+-worker-(\d+))$")
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8:
            m = pattern.match(fields[-1])
            if m:
                found[int(m.group(2))] = m.group(1)
    return found


def worker_checks(name: str) -> float:
    """Checks this worker answered so far (``authz_check_duration_seconds_count``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect("\0" + name)
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace")
    return sum(float(m.group(1)) for m in re.finditer(
        r"^authz_check_duration_seconds_count(?:\{[^}]*\})? (\S+)$", text, re.M))


def established(pid: int, port: int) -> int:
    """TCP connections of this process established on local ``port`` (from /proc)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


def worker_pids(server: Server) -> list[int]:
    """The worker processes (children running ``authz.workers``) of the supervisor."""
    out = []
    for pid in descendants(server.proc.pid):
        with contextlib.suppress(OSError):
            if b"authz.workers" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def spread_rows(ctx: Context, label: str, server: Server, listener: int,
                duration: float, port: int) -> dict[str, Any]:
    """One wrk run of w1 through Envoy; per worker: Checks, share, CPU, connections."""
    supervisor = server.proc.pid
    names = worker_sockets(supervisor)
    pids = worker_pids(server)
    if len(names) != WORKERS or len(pids) != WORKERS:
        raise RuntimeError(f"expected {WORKERS} workers, found sockets {sorted(names)} "
                           f"and processes {pids}")
    tokens = ctx.work / "tokens-w1.txt"
    before = {i: worker_checks(n) for i, n in names.items()}
    cpu0 = {pid: cpu_seconds([pid]) for pid in pids}
    # Connections are counted halfway through the run, while Envoy holds them (its
    # HTTP/1.1 pool closes idle ones soon after).
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(wrk_run, ctx, listener, tokens, TARGET_CONCURRENCY, duration)
        time.sleep(duration / 2)
        connections = {pid: established(pid, port) for pid in pids}
        data = run.result()
    after = {i: worker_checks(n) for i, n in names.items()}
    cpu1 = {pid: cpu_seconds([pid]) for pid in pids}
    checks = {i: after[i] - before[i] for i in names}
    total = sum(checks.values()) or 1.0
    seconds = data["duration_us"] / 1e6 or 1.0
    # Index order of the sockets; the processes in pid order (their index is not in
    # /proc): the share per worker is what matters, not which one is which.
    per_worker = [{"worker": i, "checks": checks[i], "share": checks[i] / total}
                  for i in sorted(checks)]
    processes = [{"pid": pid, "cpu_s": cpu1[pid] - cpu0[pid],
                  "connections": connections[pid]} for pid in sorted(pids)]
    result = {"config": label, "rps": data["requests"] / seconds,
              "p99_ms": data["p99_us"] / 1000, "non_2xx_3xx": data["non_2xx_3xx"],
              "workers": per_worker, "processes": processes,
              "busiest_share": max(w["share"] for w in per_worker),
              "connections": sum(p["connections"] for p in processes)}
    log(f"  {result['rps']:.0f} rps; Checks per worker "
        + ", ".join(f"{w['checks']:.0f} ({w['share']:.0%})" for w in per_worker)
        + "; connections per process " + ", ".join(str(p["connections"]) for p in processes))
    return result


def spread_section(ctx: Context, configs: Sequence[str] = tuple(CONFIGS)) -> dict[str, Any]:
    """Each configuration with an authz --workers 2 and an Envoy of its own."""
    if not ctx.has_workers:
        return {"skipped": "--workers not available"}
    policy = ctx.work / "policy-main"
    if not policy.exists():
        workloads.write_policy(policy, workloads.main_policy(ctx.jwks.uri))
    duration = max(1.0, ctx.args.e2e_duration)
    tokens = ctx.work / "tokens-w1.txt"
    tokens.write_text("".join(f"{t or ''}\n" for t in ctx.workloads["w1"].tokens))
    out: dict[str, Any] = {"workload": "w1", "concurrency": TARGET_CONCURRENCY,
                           "workers": WORKERS, "duration_s": duration, "runs": []}
    for label in configs:
        http = CONFIGS[label].get("transport") == "http"
        if http and not ctx.has_http:
            continue
        with ctx.failing(f"spreading {label}"):
            server = start_ours(ctx, f"ours-spread{len(out['runs'])}", policy,
                                workers=WORKERS, http_check=http)
            try:
                port = server.http_port if http else server.port
                assert port is not None
                envoy, listener = start_envoy(ctx, f"spread{len(out['runs'])}", port, None,
                                              **CONFIGS[label])
                try:
                    log(f"spreading: {label}, authz --workers {WORKERS}")
                    if ctx.args.e2e_warmup > 0:
                        wrk_run(ctx, listener, tokens, TARGET_CONCURRENCY, ctx.args.e2e_warmup)
                    out["runs"].append(spread_rows(ctx, label, server, listener, duration,
                                                   port))
                finally:
                    envoy.stop()
            finally:
                server.stop()
    return out
