"""Driving load at a server and reading back what the tool measured: bench/loadgen.py
(server only), wrk (end to end, through Envoy) and h2load (a cross-check of loadgen)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import workloads
from authorizers import CHECK_PATH, HTTP_PREFIX, HTTP_SCOPE, scrape_ours
from context import Context, Server
from procs import BENCH, PY, ROOT, busy_seconds, log


def loadgen_run(ctx: Context, server: Server, messages: Path, concurrency: int, *,
                connections: int = 1, duration: float | None = None,
                warmup: float | None = None, load_cpu: int | None = None) -> dict[str, Any]:
    args = ctx.args
    argv = [PY, str(BENCH / "loadgen.py"), "--target", f"127.0.0.1:{server.port}",
            "--messages", str(messages), "--concurrency", str(concurrency),
            "--connections", str(connections),
            "--duration", str(duration if duration is not None else args.duration),
            "--warmup", str(warmup if warmup is not None else args.warmup),
            "--cpu", str(ctx.load_cpu if load_cpu is None else load_cpu),
            # Continue the message cycle where the last run against this server stopped:
            # restarting at the head would replay tokens the server has just cached.
            "--start", str(ctx.cursors.get((server.port, str(messages)), 0))]
    ours_before = scrape_ours(server)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout is not None
    cpu0 = cpu1 = busy0 = busy1 = 0.0
    result: dict[str, Any] = {}
    for line in proc.stdout:
        line = line.strip()
        if line == "start":
            cpu0, busy0 = server.proc.cpu_seconds(), busy_seconds(server.proc.cpus)
        elif line == "end":
            cpu1, busy1 = server.proc.cpu_seconds(), busy_seconds(server.proc.cpus)
        elif line.startswith("{"):
            result = json.loads(line)
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.wait()
    if not result:
        raise RuntimeError(f"loadgen failed: {stderr}")
    ours_after = scrape_ours(server)
    ctx.cursors[(server.port, str(messages))] = result.get("next_start", 0)
    requests = result["requests"]
    rss_sum, rss_max, nproc = server.proc.peak_rss_mib()
    window = result["duration_s"] or 1.0
    # Time the server's CPUs spent on anything but the server (other processes,
    # interrupts; the load generator too where it shares a CPU): noise shows here.
    result["other_cpu_util"] = max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / window
    result.update(
        server_cpu_s=cpu1 - cpu0,
        cpu_s_per_1k=(cpu1 - cpu0) / requests * 1000 if requests else None,
        server_cpu_util=(cpu1 - cpu0) / result["duration_s"] if result["duration_s"] else None,
        peak_rss_mib=rss_sum, peak_rss_max_mib=rss_max, server_processes=nproc,
    )
    if ours_before and ours_after:
        delta = {k: ours_after[k] - ours_before[k] for k in ours_after}
        for cache in ("token", "decision"):
            lookups = delta[f"{cache}_hit"] + delta[f"{cache}_miss"]
            result[f"{cache}_cache_hit_ratio"] = (
                delta[f"{cache}_hit"] / lookups if lookups else None)
        # Warm-up included: the mean over every Check of the run.
        result["handler_us"] = delta["sum"] / delta["count"] * 1e6 if delta["count"] else None
    if result["loadgen_cpu_util"] > 0.9:
        log(f"warning: load generator at {result['loadgen_cpu_util']:.0%} CPU; "
            "the figure may be the generator's limit")
    return result


WRK_SCRIPT = """\
-- Cycles the bearer tokens of the file given after "--" (an empty line: no token),
-- from the (0-based) index given after it, if any.
local reqs = {}
local n = 0
local i = 0

init = function(args)
  for line in io.lines(args[1]) do
    n = n + 1
    local headers = {["Host"] = "%(host)s"%(extra)s}
    if line ~= "" then headers["Authorization"] = "Bearer " .. line end
    reqs[n] = wrk.format("GET", "%(path)s", headers)
  end
  if args[2] then i = tonumber(args[2]) %% n end
end

request = function()
  i = i %% n + 1
  return reqs[i]
end

done = function(summary, latency, requests)
  io.write(string.format('{"requests": %%d, "duration_us": %%d, "connect_errors": %%d, ' ..
    '"read_errors": %%d, "write_errors": %%d, "non_2xx_3xx": %%d, "timeouts": %%d, ' ..
    '"p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "mean_us": %%f, "max_us": %%d}\\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
"""


def wrk_run(ctx: Context, listener: int, tokens: Path, concurrency: int,
            duration: float, *, prefix: str = "",
            headers: Mapping[str, str] | None = None, start: int = 0) -> dict[str, Any]:
    """wrk -t1 -c``concurrency`` (one connection per request in flight, keep-alive)
    at ``prefix`` + the workloads' path, cycling ``tokens`` from index ``start``, with
    ``headers`` added."""
    extra = "".join(f', ["{k}"] = "{v}"' for k, v in (headers or {}).items())
    text = WRK_SCRIPT % {"host": workloads.HOST, "path": prefix + workloads.PATH,
                         "extra": extra}
    script = ctx.work / f"bench-{hashlib.sha1(text.encode()).hexdigest()[:8]}.lua"
    if not script.exists():
        script.write_text(text)
    seconds = max(1, round(duration))
    argv = ["taskset", "-c", str(ctx.load_cpu), "wrk", "-t1", f"-c{concurrency}",
            f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
            f"http://127.0.0.1:{listener}{prefix}{workloads.PATH}", "--", str(tokens),
            str(start)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def h2load_run(ctx: Context, server: Server, body: Path, concurrency: int, duration: float,
               warmup: float) -> dict[str, Any]:
    """h2load with the same shape: 1 connection, ``concurrency`` streams, same durations."""
    argv = ["taskset", "-c", str(ctx.load_cpu), "h2load", "-D", f"{round(duration * 1000)}ms",
            "--warm-up-time", f"{round(warmup * 1000)}ms", "-c", "1", "-m", str(concurrency),
            "-t", "1",
            "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
            f"http://127.0.0.1:{server.port}{CHECK_PATH}"]
    return run_h2load(server, argv, duration, warmup)


def run_h2load(server: Server, argv: list[str], duration: float,
               warmup: float) -> dict[str, Any]:
    """Run h2load and read back its summary, with the server's CPU per 1,000 requests."""
    cpu0 = server.proc.cpu_seconds()
    text = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    cpu1 = server.proc.cpu_seconds()
    result = parse_h2load(text)
    rate = result["rps"]
    # CPU is sampled around the whole h2load run (warm-up included), so it is divided by
    # the requests of warm-up + measurement at the measured rate.
    result["cpu_s_per_1k"] = (cpu1 - cpu0) / (rate * (duration + warmup)) * 1000 if rate else None
    return result


def h2load_http_run(ctx: Context, server: Server, token: str | None, concurrency: int,
                    duration: float, warmup: float) -> dict[str, Any]:
    """``h2load --h1`` at our HTTP front door: ``concurrency`` keep-alive connections, one
    request in flight on each, one fixed request (h2load cannot vary a header, so only
    w1's single token; wrk cycles tokens for the rows)."""
    assert server.http_port is not None
    headers = [":authority: " + workloads.HOST, *(f"{k}: {v}" for k, v in HTTP_SCOPE.items())]
    if token:
        headers.append(f"authorization: Bearer {token}")
    argv = ["taskset", "-c", str(ctx.load_cpu), "h2load", "--h1",
            "-D", f"{round(duration * 1000)}ms", "--warm-up-time", f"{round(warmup * 1000)}ms",
            "-c", str(concurrency), "-m", "1", "-t", "1",
            *(a for h in headers for a in ("-H", h)),
            f"http://127.0.0.1:{server.http_port}{HTTP_PREFIX}{workloads.PATH}"]
    return run_h2load(server, argv, duration, warmup)


def parse_h2load(text: str) -> dict[str, Any]:
    """RPS, request counts and latency (in ms, whatever unit h2load chose) of h2load's
    summary; a summary that does not parse is an error, not a row of blanks."""
    rps = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored", text)
    # Columns: min, max, mean, sd, +/- sd.
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    mean_ms, max_ms = (duration_ms(lat.group(3)), duration_ms(lat.group(2))) if lat else (
        math.nan, math.nan)
    if not (rps and done) or math.isnan(mean_ms) or math.isnan(max_ms):
        tail = "\n".join(text.strip().splitlines()[-10:])
        raise RuntimeError(f"h2load output did not parse:\n{tail}")
    return {"rps": float(rps.group(1)), "succeeded": int(done.group(2)),
            "failed": int(done.group(3)), "errored": int(done.group(4)),
            "mean_ms": mean_ms, "max_ms": max_ms}


def duration_ms(text: str) -> float:
    """h2load's duration (``265us``, ``7.53ms``, ``1.02s``) in milliseconds; NaN if not one."""
    m = re.fullmatch(r"([\d.]+)(us|µs|ms|s)", text)
    if not m:
        return math.nan
    return float(m.group(1)) * {"us": 0.001, "µs": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def mean_of(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        values = [float(r[k]) for r in runs if isinstance(r.get(k), int | float)]
        out[k] = sum(values) / len(values) if values else None
    return out


def http_run(ctx: Context, server: Server, name: str, concurrency: int, *,
             duration: float | None = None, warmup: float | None = None) -> dict[str, Any]:
    """wrk straight at our HTTP front door (``/envoy`` + the path, the scope header
    Envoy's generated configuration adds), cycling the workload's tokens over
    ``concurrency`` keep-alive connections; the server's CPU and /metrics around the
    measured run, as loadgen_run reports them."""
    assert server.http_port is not None
    tokens = ctx.work / f"tokens-{name}.txt"
    if not tokens.exists():
        tokens.write_text("".join(f"{t or ''}\n" for t in ctx.workloads[name].tokens))
    # Each run continues the token cycle where the last one against this server stopped
    # (as loadgen_run does): restarting at the head would replay tokens just cached.
    cursor = (server.http_port, str(tokens))
    count = len(ctx.workloads[name].tokens)
    warm = ctx.args.warmup if warmup is None else warmup
    if warm > 0:
        warmed = wrk_run(ctx, server.http_port, tokens, concurrency, warm, prefix=HTTP_PREFIX,
                         headers=HTTP_SCOPE, start=ctx.cursors.get(cursor, 0))
        ctx.cursors[cursor] = (ctx.cursors.get(cursor, 0) + warmed["requests"]) % count
    ours_before = scrape_ours(server)
    cpu0, busy0 = server.proc.cpu_seconds(), busy_seconds(server.proc.cpus)
    data = wrk_run(ctx, server.http_port, tokens, concurrency,
                   ctx.args.duration if duration is None else duration, prefix=HTTP_PREFIX,
                   headers=HTTP_SCOPE, start=ctx.cursors.get(cursor, 0))
    ctx.cursors[cursor] = (ctx.cursors.get(cursor, 0) + data["requests"]) % count
    cpu1, busy1 = server.proc.cpu_seconds(), busy_seconds(server.proc.cpus)
    ours_after = scrape_ours(server)
    requests = data["requests"]
    window = data["duration_us"] / 1e6 or 1.0
    errors = (data["connect_errors"] + data["read_errors"] + data["write_errors"]
              + data["timeouts"])
    rss_sum, rss_max, nproc = server.proc.peak_rss_mib()
    result: dict[str, Any] = {
        "requests": requests, "errors": errors, "non_2xx_3xx": data["non_2xx_3xx"],
        "rps": requests / window, "p50_ms": data["p50_us"] / 1000,
        "p90_ms": data["p90_us"] / 1000, "p99_ms": data["p99_us"] / 1000,
        "mean_ms": data["mean_us"] / 1000, "max_ms": data["max_us"] / 1000,
        "duration_s": window, "server_cpu_s": cpu1 - cpu0,
        "cpu_s_per_1k": (cpu1 - cpu0) / requests * 1000 if requests else None,
        "server_cpu_util": (cpu1 - cpu0) / window,
        "other_cpu_util": max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / window,
        "peak_rss_mib": rss_sum, "peak_rss_max_mib": rss_max, "server_processes": nproc,
        "tool": "wrk",
    }
    if ours_before and ours_after:
        delta = {k: ours_after[k] - ours_before[k] for k in ours_after}
        for cache in ("token", "decision"):
            lookups = delta[f"{cache}_hit"] + delta[f"{cache}_miss"]
            result[f"{cache}_cache_hit_ratio"] = (
                delta[f"{cache}_hit"] / lookups if lookups else None)
        result["handler_us"] = delta["sum"] / delta["count"] * 1e6 if delta["count"] else None
    return result
