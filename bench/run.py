"""`make bench`: our server vs. a bare gRPC ceiling, a naive PyJWT server and Envoy's jwt_authn.

One run measures, with the same load tool for every server:

- server only: bench/loadgen.py (HTTP/2 gRPC, pre-encoded frames) straight at
  ``envoy.service.auth.v3.Authorization/Check`` of ours, bench/servers/bare.py
  (always OK: the ceiling, on asyncio's loop and gRPC's defaults; and again as
  bare-tuned, on the runtime ours runs on: uvloop and authz/grpc_env.py's gRPC core
  settings, as a reference) and bench/servers/naive.py (PyJWT RS256 per call);
- end to end: wrk (Lua script cycling tokens) through a real Envoy whose
  ext_authz asks ours / bare / naive, and Envoy's own jwt_authn + RBAC with no
  ext_authz at all;

for workloads w1-w5 and w2f (bench/workloads.py) at concurrency 1 and 32, with the
server (and Envoy) pinned to one CPU and the load generator to another. It
prints a markdown table, writes it to bench/results/latest.md and everything
to bench/results/latest.json, and prints PASS/FAIL for the targets of docs/benchmarks.md.
The exit status does not depend on the targets; it is 1 when any part of the run failed
(a server that did not start or died, a wrong answer, a tool whose output did not parse:
the report lists them under Failures), so a broken benchmark does not pass for a slow one.

This file plans the run and writes the report; the parts live beside it: procs.py
(pinned processes, /proc accounting), authorizers.py (starting ours, the reference
servers and Envoy), load.py (loadgen, wrk, h2load), sections.py (the measurement
matrices), verdicts.py (the targets) and report.py (tables, JSON).

Run: python bench/run.py [--quick] [--workers-compare] [--skip-e2e]
"""


from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
import workloads
from authorizers import preload_envoy_config
from context import (
    CONCURRENCY,
    TARGET_CONCURRENCY,
    Context,
    http_check_available,
    workers_flag_available,
)
from procs import BENCH, loadavg, log
from report import finite, machine, render
from sections import (
    HTTP_KIND,
    SERVER_KINDS,
    end_to_end,
    h2load_check,
    server_only,
    workers_compare,
)
from spread import spread_section
from verdicts import runtime_reference, targets

from authz.config import EVENT_LOOPS
from authz.testing.envoy_bootstrap import envoy_binary

RESULTS = BENCH / "results"

__all__ = ["TARGET_CONCURRENCY", "exit_status", "main", "parse_args", "targets"]


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="authz-bench-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)



def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="~1 s per measurement, concurrency 32 only, fewer rows (< 60 s)")
    parser.add_argument("--workers-compare", action="store_true",
                        help="also measure our server with --workers 1 vs --workers 2")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the server-only matrix N times, report each row's median "
                        "RPS run (for noisy machines; multiplies its time)")
    parser.add_argument("--skip-server", action="store_true",
                        help="no server-only matrix (e.g. with --workers-compare alone)")
    parser.add_argument("--skip-e2e", action="store_true", help="no Envoy/wrk measurements")
    parser.add_argument("--skip-h2load", action="store_true",
                        help="no h2load cross-check of the load generator")
    parser.add_argument("--spread", action=argparse.BooleanOptionalAction, default=None,
                        help="measure how one Envoy's Checks spread over authz --workers 2 "
                        "(default: on, off with --quick or --skip-e2e)")
    parser.add_argument("--duration", type=float, help="measured seconds per row "
                        "(default 5, quick 1)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per row "
                        "(default 1, quick 0.2)")
    parser.add_argument("--e2e-duration", type=float,
                        help="wrk seconds per end-to-end row (whole seconds; default 3, quick 1)")
    parser.add_argument("--e2e-warmup", type=float,
                        help="wrk warm-up run seconds (default 1, quick 0)")
    parser.add_argument("--tokens", type=int, help="distinct tokens of w2 (default 10000, "
                        "quick 300)")
    parser.add_argument("--fresh-tokens", type=int,
                        help="distinct tokens of w2f, the workload no cache of ours can hold "
                        "(default 15000: more than the 10,000 tokens and 12,500 decisions "
                        "they keep; quick 0, i.e. no w2f)")
    parser.add_argument("--elsewhere", type=int, help="w5 policies in other namespaces "
                        "(default 10000, quick 200)")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto",
                        help="our server's --event-loop (the references keep theirs: bare "
                        "and naive asyncio, bare-tuned uvloop)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, fast in (("duration", 5.0, 1.0), ("warmup", 1.0, 0.2),
                             ("e2e_duration", 3.0, 1.0), ("e2e_warmup", 1.0, 0.0),
                             ("tokens", 10_000, 300), ("fresh_tokens", 15_000, 0),
                             ("elsewhere", 10_000, 200)):
        if getattr(args, name) is None:
            setattr(args, name, fast if quick else full)
    if args.spread is None:
        args.spread = not (quick or args.skip_e2e)
    return args



@dataclass(frozen=True)
class Matrix:
    """What a run measures: the server-only workloads per kind of server, the end-to-end
    configurations and workloads, and the concurrencies of both."""

    concurrencies: Sequence[int]
    server: Mapping[str, Sequence[str]]
    e2e_configs: Sequence[str]
    e2e_names: Sequence[str]


def matrix(quick: bool, http: bool = False) -> Matrix:
    """The rows of a run; with ``http`` (authz serve has --http-check-address) our HTTP
    front door too, server only and through Envoy's http_service (quick: w1 only)."""
    if quick:
        return Matrix((TARGET_CONCURRENCY,),
                      {"bare": ["w1", "w2", "w3", "w4"], "bare-tuned": ["w1"], "naive": ["w2"],
                       "ours": ["w1", "w2", "w3", "w4"], "w5": ["w5"],
                       **({HTTP_KIND: ["w1"]} if http else {})},
                      ["ours", *(["http"] if http else []), "jwt_authn"], ["w1"])
    every = ["w1", "w2", "w3", "w4"]
    return Matrix(CONCURRENCY,
                  {"bare": every, "bare-tuned": every, "naive": every, "ours": every,
                   "w5": ["w5"], **({HTTP_KIND: every} if http else {})},
                  ["ours", *(["http"] if http else []), "bare", "naive", "jwt_authn"], every)


def measure(ctx: Context, plan: Matrix) -> dict[str, Any]:
    """Every section the arguments ask for, in order; what each produced, for the report."""
    args = ctx.args
    rows: list[dict[str, Any]] = []
    if args.skip_server:
        log("server-only section skipped (--skip-server)")
    else:
        server_only(ctx, plan.concurrencies, plan.server, rows)
        if "w2f" in ctx.workloads:
            # Servers of their own: w2f's tokens would push w2's out of our caches
            # and change what the next round of w2 measures.
            server_only(ctx, plan.concurrencies,
                        {kind: ["w2f"] for kind in ("bare", "naive", "ours")}, rows)
    e2e_status = None
    if args.skip_e2e:
        e2e_status = "skipped (--skip-e2e)"
    else:
        try:
            e2e_status = end_to_end(ctx, plan.e2e_configs, plan.e2e_names, plan.concurrencies,
                                    rows)
        except Exception as exc:
            e2e_status = f"failed: {exc}"
            ctx.failures.append(f"end-to-end: {type(exc).__name__}: {exc}")
            log(e2e_status)
    spreading: dict[str, Any] | None = None
    if args.spread:
        if envoy_binary() is None or shutil.which("wrk") is None:
            spreading = {"skipped": "needs envoy and wrk"}
        else:
            spreading = {"skipped": "failed (see Failures)"}
            with ctx.failing("spreading"):
                spreading = spread_section(ctx)
    workers: dict[str, Any] | None = None
    if args.workers_compare:
        workers = {"skipped": "failed (see Failures)"}
        with ctx.failing("workers comparison"):
            workers = workers_compare(ctx)
    h2: list[dict[str, Any]] | None = None
    if not args.quick and not args.skip_h2load:
        with ctx.failing("h2load check"):
            h2 = h2load_check(ctx, (TARGET_CONCURRENCY,))
    return {"rows": rows, "e2e_status": e2e_status, "workers": workers, "h2load_check": h2,
            "spreading": spreading}


def exit_status(report: Mapping[str, Any]) -> int:
    """1 when any part of the run failed (listed under Failures), else 0: the targets'
    verdicts are the report's business, not the exit status's."""
    return 1 if report.get("failures") else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = loadavg()
    if load_before[0] > 0.5:
        log(f"warning: load average {load_before[0]:.2f} before starting: other processes "
            "are running, numbers will be noisy (see 'other load' notes)")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        log("warning: one CPU available: server and load generator share it")
    server_cpus, load_cpu = [cpus[0]], cpus[-1]
    # Envoy's typed config classes take seconds to import: do it while tokens are minted.
    preload = threading.Thread(target=preload_envoy_config, daemon=True)
    if not args.skip_e2e:
        preload.start()
    k = workloads.make_keys()
    log(f"minting {args.tokens + args.fresh_tokens:,} tokens")
    wls = workloads.token_workloads(k, args.tokens, args.fresh_tokens)
    if preload.is_alive() or preload.ident is not None:
        preload.join()
    # The orchestrator (this process, and the JWKS thread) stays off the server's CPU.
    os.sched_setaffinity(0, {load_cpu})
    jwks = workloads.JwksServer(k.jwks_document())
    titles = {n: w.title for n, w in wls.items()}
    titles["w5"] = "policy scale"
    report: dict[str, Any] = {}
    with workdir(args.keep) as work:
        messages = {}
        for name, wl in wls.items():
            messages[name] = work / f"{name}.bin"
            loadgen.write_messages(messages[name], wl.check_requests())
        messages["w5"] = work / "w5.bin"
        loadgen.write_messages(messages["w5"], [workloads.W5_REQUEST()])
        ctx = Context(args, work, server_cpus, load_cpu, server_cpus, k, jwks, wls, messages,
                      workers_flag_available(), cpus, has_http=http_check_available())
        log(f"server CPUs {server_cpus}, load generator CPU {load_cpu}, Envoy CPUs "
            f"{server_cpus}; --workers flag {'present' if ctx.has_workers else 'absent'}")
        measured = measure(ctx, matrix(args.quick, ctx.has_http))
        jwks.stop()
        rows = measured["rows"]
        report = {
            "meta": {
                "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "machine": machine(), "server_cpus": server_cpus, "load_cpu": load_cpu,
                "envoy_cpus": server_cpus, "duration_s": args.duration,
                "warmup_s": args.warmup, "e2e_duration_s": args.e2e_duration,
                "e2e_warmup_s": args.e2e_warmup, "repeat": args.repeat,
                "tokens": args.tokens, "fresh_tokens": args.fresh_tokens,
                "elsewhere": args.elsewhere,
                "workers_flag": ctx.has_workers, "http_front_door": ctx.has_http,
                "pinning": ctx.pinning,
                "event_loops": {kind: "/".join(sorted(ctx.loops.get(kind, ()))) or "not started"
                                for kind in SERVER_KINDS},
                "grpc_experiments": {kind: "/".join(sorted(ctx.grpc_experiments[kind]))
                                     for kind in SERVER_KINDS if kind in ctx.grpc_experiments},
                "peak_rss": "VmHWM summed over the server's process tree (max in JSON)",
                "workload_titles": titles,
                "elapsed_s": 0.0, "loadavg_before": load_before, "loadavg_after": loadavg(),
            },
            **measured, "failures": ctx.failures,
            "targets": targets(rows, measured["workers"], args.elsewhere,
                               measured["spreading"]),
            "runtime_reference": runtime_reference(rows),
        }
        report["meta"]["elapsed_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(
        json.dumps(finite(report), indent=1, default=str, allow_nan=False) + "\n")
    text = render(report)
    (args.out / "latest.md").write_text(text)
    print(text)
    print("Targets:")
    for t in report["targets"]:
        print(f"  {t['result']}: {t['target']} ({t['detail']})")
    status = exit_status(report)
    log(f"done in {report['meta']['elapsed_s']:.0f} s; wrote {args.out / 'latest.md'} and "
        f"{args.out / 'latest.json'}"
        + (f"; {len(report['failures'])} part(s) failed (exit 1)" if status else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
