"""The report of a benchmark run: the markdown tables printed and written to
latest.md, the machine it ran on, and strict JSON for latest.json."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from procs import cpulist
from verdicts import find, ratio

from authz.testing.envoy_bootstrap import envoy_binary

NOISY = 0.15  # other processes' CPU (fraction of one CPU) worth a note in the table


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if digits == 0:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def row_notes(r: Mapping[str, Any], errors: str, extra: Sequence[str] = ()) -> list[str]:
    """A row's notes: its own, its errors, the table's ``extra``, then noise."""
    notes = [r.get("note") or ""]
    if r.get("errors"):
        notes.append(f"{r['errors']} {errors}")
    notes.extend(extra)
    if r.get("other_cpu_util", 0) > NOISY:
        notes.append(f"other load {r['other_cpu_util']:.0%} CPU")
    return notes


def workload_title(r: Mapping[str, Any], titles: Mapping[str, str]) -> str:
    return f"{r['workload']} {titles.get(r['workload'], '')}".strip()


def server_table(rows: Sequence[Mapping[str, Any]], titles: Mapping[str, str]) -> list[str]:
    out = ["| workload | server | conc | RPS | p50 ms | p99 ms | CPU s/1k req | peak RSS MiB "
           "| vs bare | vs bare-tuned | vs naive | answer | notes |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for r in rows:
        if r["section"] != "server" or r["server"] == "ours-http":  # its own table
            continue
        bare = find(rows, "server", "bare", r["workload"], r["concurrency"])
        bare_uv = find(rows, "server", "bare-tuned", r["workload"], r["concurrency"])
        naive = find(rows, "server", "naive", r["workload"], r["concurrency"])
        extra = []
        if r.get("decision_cache_hit_ratio") is not None:
            extra.append(f"decision cache hits {r['decision_cache_hit_ratio']:.0%}")
        if r.get("token_cache_hit_ratio") is not None:
            extra.append(f"token cache hits {r['token_cache_hit_ratio']:.0%}")
        if r.get("handler_us") is not None:
            extra.append(f"in handler {r['handler_us']:.0f} µs")
        if r.get("ready_s") is not None:
            extra.append(f"ready in {r['ready_s']:.1f} s")
        if r.get("loadgen_cpu_util", 0) > 0.9:
            extra.append(f"loadgen {r['loadgen_cpu_util']:.0%} CPU")
        notes = row_notes(r, "errors", extra)
        wl = workload_title(r, titles)
        out.append(
            f"| {wl} | {r['server']} | {r['concurrency']} | {fmt(r['rps'], 0)} "
            f"| {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r.get('cpu_s_per_1k'), 3)} "
            f"| {fmt(r.get('peak_rss_mib'), 0)} "
            f"| {fmt(ratio(r, bare)) if r['server'] != 'bare' else ''} "
            f"| {fmt(ratio(r, bare_uv)) if bare_uv and not r['server'].startswith('bare') else ''} "
            f"| {fmt(ratio(r, naive)) if naive and r['server'] != 'naive' else ''} "
            f"| {r.get('probe', '')} | {'; '.join(n for n in notes if n)} |")
    return out


def http_table(rows: Sequence[Mapping[str, Any]], titles: Mapping[str, str]) -> list[str]:
    """Our HTTP front door beside our gRPC Check, workload by workload."""
    out = ["| workload | conc | gRPC RPS | HTTP RPS | HTTP/gRPC | gRPC p99 ms | HTTP p99 ms "
           "| gRPC CPU s/1k | HTTP CPU s/1k | gRPC/HTTP CPU | HTTP in handler µs "
           "| HTTP answer | notes |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for r in rows:
        if r["section"] != "server" or r["server"] != "ours-http":
            continue
        grpc = find(rows, "server", "ours", r["workload"], r["concurrency"]) or {}
        out.append(
            f"| {workload_title(r, titles)} | {r['concurrency']} | {fmt(grpc.get('rps'), 0)} "
            f"| {fmt(r['rps'], 0)} | {fmt(ratio(r, grpc))} | {fmt(grpc.get('p99_ms'))} "
            f"| {fmt(r['p99_ms'])} | {fmt(grpc.get('cpu_s_per_1k'), 3)} "
            f"| {fmt(r.get('cpu_s_per_1k'), 3)} | {fmt(ratio(grpc, r, 'cpu_s_per_1k'))} "
            f"| {fmt(r.get('handler_us'), 0)} | {r.get('probe', '')} "
            f"| {'; '.join(n for n in row_notes(r, 'socket errors') if n)} |")
    return out


def e2e_table(rows: Sequence[Mapping[str, Any]], titles: Mapping[str, str]) -> list[str]:
    out = ["| workload | authorizer | conc | RPS | p50 ms | p99 ms | authz CPU s/1k "
           "| Envoy CPU s/1k | authz RSS MiB | Envoy RSS MiB | vs ext_authz→bare "
           "| vs jwt_authn | HTTP | notes |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for r in rows:
        if r["section"] != "e2e":
            continue
        bare = find(rows, "e2e", "ext_authz → bare", r["workload"], r["concurrency"])
        jwt = find(rows, "e2e", "jwt_authn+RBAC (in Envoy)", r["workload"], r["concurrency"])
        apart = r.get("authz_cpus") and r["authz_cpus"] != r.get("envoy_cpus")
        notes = row_notes(r, "socket errors", [f"authz on CPU {cpulist(r['authz_cpus'])}, "
                                               "beside wrk"] if apart else [])
        wl = workload_title(r, titles)
        out.append(
            f"| {wl} | {r['server']} | {r['concurrency']} | {fmt(r['rps'], 0)} "
            f"| {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r.get('cpu_s_per_1k'), 3)} "
            f"| {fmt(r.get('envoy_cpu_s_per_1k'), 3)} | {fmt(r.get('peak_rss_mib'), 0)} "
            f"| {fmt(r.get('envoy_peak_rss_mib'), 0)} "
            f"| {fmt(ratio(r, bare)) if r is not bare else ''} "
            f"| {fmt(ratio(r, jwt)) if r is not jwt else ''} "
            f"| {r.get('probe', '')} | {'; '.join(n for n in notes if n)} |")
    return out


def workers_table(data: Mapping[str, Any]) -> list[str]:
    if "skipped" in data:
        return [f"skipped: {data['skipped'].removeprefix('skipped: ')}"]
    out = [f"w1, concurrency {data['concurrency']} over {data['connections']} connections, "
           f"load generator on CPU {data['load_cpu']}"
           + (" (shared with the 2-CPU server run)" if data["shared_with_load"] else ""),
           "", "| server | CPUs | RPS | p50 ms | p99 ms | CPU s/1k req | peak RSS MiB (sum) "
           "| processes | vs 1 worker |", "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    base = next((r for r in data["runs"] if r["workers"] == 1 and "rps" in r), None)
    for r in data["runs"]:
        cpus = cpulist(r["cpus"])
        if "skipped" in r:
            out.append(f"| {r['label']} | {cpus} | {r['skipped']} | | | | | | |")
            continue
        out.append(f"| {r['label']} | {cpus} | {fmt(r['rps'], 0)} | {fmt(r['p50_ms'])} "
                   f"| {fmt(r['p99_ms'])} | {fmt(r['cpu_s_per_1k'], 3)} "
                   f"| {fmt(r['peak_rss_mib'], 0)} | {r['server_processes']} "
                   f"| {fmt(ratio(r, base))} |")
    return out


def spread_table(data: Mapping[str, Any]) -> list[str]:
    if "skipped" in data and not data.get("runs"):
        return [f"skipped: {data['skipped']}"]
    out = [f"{data['workload']} through one Envoy (--concurrency 1), wrk concurrency "
           f"{data['concurrency']}, authz --workers {data['workers']}; Checks counted by each "
           "worker's own /metrics, connections from /proc.", "",
           "| Envoy's authz cluster | RPS | p99 ms | Checks per worker | busiest share "
           "| connections per process | CPU s per process |", "|---|--:|--:|---|--:|---|---|"]
    for r in data["runs"]:
        checks = " / ".join(f"{w['checks']:,.0f}" for w in r["workers"])
        conns = " / ".join(str(p["connections"]) for p in r["processes"])
        cpu = " / ".join(f"{p['cpu_s']:.2f}" for p in r["processes"])
        out.append(f"| {r['config']} | {fmt(r['rps'], 0)} | {fmt(r['p99_ms'])} | {checks} "
                   f"| {r['busiest_share']:.0%} | {conns} | {cpu} |")
    return out


def h2load_table(data: Sequence[Mapping[str, Any]]) -> list[str]:
    if data and "skipped" in data[0]:
        return [str(data[0]["skipped"])]
    out = [f"Mean of {data[0].get('rounds', 1) if data else 0} alternating rounds per tool.", "",
           "| server | conc | loadgen RPS | h2load RPS | h2load/loadgen | loadgen mean ms "
           "| h2load mean ms | loadgen CPU s/1k | h2load CPU s/1k |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in data:
        lg, h2 = r["loadgen"], r["h2load"]
        # The HTTP front door's row compares wrk (its rows' tool) with h2load --h1.
        server = f"{r['server']} (wrk vs --h1)" if r.get("tool") == "wrk" else r["server"]
        out.append(f"| {server} | {r['concurrency']} | {fmt(lg['rps'], 0)} "
                   f"| {fmt(h2.get('rps'), 0)} | {fmt(ratio(h2, lg))} | {fmt(lg['mean_ms'])} "
                   f"| {fmt(h2.get('mean_ms'))} | {fmt(lg.get('cpu_s_per_1k'), 3)} "
                   f"| {fmt(h2.get('cpu_s_per_1k'), 3)} |")
    return out


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import grpc

    envoy_version = ""
    with contextlib.suppress(Exception):
        binary = envoy_binary()
        if binary:
            envoy_version = subprocess.run([binary, "--version"], capture_output=True,
                                           text=True, timeout=30).stdout.strip().split(
                                               "version:")[-1].strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "grpcio": grpc.__version__, "kernel": platform.release(), "envoy": envoy_version}


def render(report: Mapping[str, Any]) -> str:
    meta = report["meta"]
    titles = meta["workload_titles"]
    lines = [
        f"# authz benchmark ({'quick' if meta['quick'] else 'full'} run, "
        f"{meta['date']})", "",
        f"Machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), "
        f"Python {meta['machine']['python']}, grpcio {meta['machine']['grpcio']}, "
        f"Envoy {meta['machine']['envoy'] or '-'}.  ",
        f"Pinning: server (and Envoy) on CPU {cpulist(meta['server_cpus'])}, load generator "
        f"on CPU {meta['load_cpu']}. Durations: server only {meta['duration_s']} s measured "
        f"after {meta['warmup_s']} s warm-up per row, end to end {meta['e2e_duration_s']:.0f} s "
        f"after a {meta['e2e_warmup_s']:.0f} s wrk warm-up; our server runs "
        f"{'--workers 1' if meta['workers_flag'] else 'without --workers (flag absent)'}, "
        "--decision-log none.  ",
        *([f"Event loops: bare {loops['bare']} (the ceiling), bare-tuned "
           f"{loops['bare-tuned']}, naive {loops['naive']}, ours {loops['ours']}.  "]
          if (loops := meta.get("event_loops")) else []),
        *(["gRPC core (GRPC_EXPERIMENTS, as each server read it; empty: gRPC's defaults): "
           + ", ".join(f"{kind} `{value}`" for kind, value in experiments.items()) + ".  "]
          if (experiments := meta.get("grpc_experiments")) else []),
        *([f"Repeats: the server-only matrix ran {meta['repeat']} times; each row is its run "
           "of median RPS (every run's RPS and p99 in the JSON as `rps_runs`, `p99_runs`); "
           "the w1 p99 target compares each server's median p99 over the runs.  "]
          if meta.get("repeat", 1) > 1 else []),
        f"Load average before the run: {meta['loadavg_before'][0]:.2f}.  ",
        "CPU s/1k req: utime+stime of the server's processes during the measured window per "
        "1,000 requests. Peak RSS: VmHWM summed over the server's processes.", "",
        "## Server only (gRPC Check, bench/loadgen.py, 1 HTTP/2 connection)", "",
        *(server_table(report["rows"], titles) if any(
            r["section"] == "server" for r in report["rows"]) else ["skipped"]), "",
        *(["## Server only, HTTP front door beside gRPC (wrk, 32 keep-alive connections)",
           "", *http_table(report["rows"], titles), ""]
          if any(r["server"] == "ours-http" for r in report["rows"]) else []),
        "## End to end (wrk → Envoy → authorizer; Envoy answers 200 itself)", "",
    ]
    e2e = report.get("e2e_status")
    lines += [e2e, ""] if e2e else [*e2e_table(report["rows"], titles), ""]
    if report.get("workers") is not None:
        lines += ["## Workers (--workers 1 vs 2)", "", *workers_table(report["workers"]), ""]
    if report.get("spreading") is not None:
        lines += ["## Spreading over workers (Envoy → authz --workers 2)", "",
                  *spread_table(report["spreading"]), ""]
    if report.get("h2load_check") is not None:
        lines += ["## Load generator vs h2load (w1)", "", *h2load_table(report["h2load_check"]),
                  ""]
    if report.get("failures"):
        lines += ["## Failures", "", *(f"- {f}" for f in report["failures"]), ""]
    lines += ["## Targets (server only, one worker, concurrency 32)", ""]
    lines += [f"- {t['result']}: {t['target']}: {t['detail']}" for t in report["targets"]]
    if report.get("runtime_reference"):
        lines += ["", "## Against the ceiling on our runtime (a reference, not a target)", "",
                  "The ceiling is a bare grpc.aio servicer on asyncio's loop and "
                  "gRPC's defaults; our server runs on uvloop, with gRPC core settings of its "
                  "own (authz/grpc_env.py). The same bare servicer on both (bare-tuned) shows "
                  "how much of the ratios above the runtime gives (concurrency 32):", ""]
        lines += [f"- {r['workload']}: {r['detail']}" for r in report["runtime_reference"]]
    return "\n".join(lines) + "\n"


def finite(value: Any) -> Any:
    """NaN/inf become null so latest.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
