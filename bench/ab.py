"""Interleaved A/B: ours vs bare, same load generator, alternating rounds.

On a shared machine the CPU available drifts from minute to minute, so two
rows of `bench/run.py` measured minutes apart can differ by 30% for nothing.
Here both servers run side by side (each pinned to the server CPU, idle while
the other is measured) and rounds alternate quickly, so drift hits both; the
ratio per round and the median ratio are printed.

With ``--naive`` the naive servicer (PyJWT on every call) runs beside them:
``--workloads w2 --tokens 20000 --naive`` compares what a token seen for the
first time costs us with what it costs a server that verifies every call.

With ``--loops`` bare runs again on our server's runtime (bare-tuned: uvloop and
the gRPC core settings of ``authz/grpc_env.py``) and ours again on asyncio's loop
(ours runs on uvloop by default): what the runtime gives each. With
``--grpc-defaults`` ours runs again on gRPC core's own defaults
(``GRPC_EXPERIMENTS=``): what ``authz/grpc_env.py`` gives ours alone. Every round
prints each server's CPU per request (utime+stime over the load, warm-up
included) beside its RPS: on a machine with steal time CPU per request moves
less than RPS.

With ``--baseline DIR`` our server runs a second time from another checkout
(``git worktree add /tmp/base HEAD~1``): the A/B of a change to the request
path, same rounds, same load, printed as ``baseline`` beside ``ours``.

Run: python bench/ab.py [--workloads w1 w4] [--rounds 3] [--duration 4] [--spin-us 30 100]
                        [--naive] [--loops] [--grpc-defaults] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import loadgen
import workloads
from authorizers import reference_argv
from procs import cpu_seconds

from authz.testing.ports import free_port

BENCH = Path(__file__).resolve().parent
PY = sys.executable


def start(kind: str, work: Path, cpu: int,
          baseline: Path | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """bare, bare-tuned, spinN, naive, ours (its default loop), ours-asyncio,
    ours-grpc-defaults, or baseline (ours from the checkout ``baseline``)."""
    port = free_port()
    cwd = None
    if kind.startswith("spin"):
        argv = reference_argv("bare", port, work / "issuer.pub.pem",
                              float(kind.removeprefix("spin")))
    elif kind in ("bare", "bare-tuned", "naive"):
        argv = reference_argv(kind, port, work / "issuer.pub.pem")
    else:
        argv = [PY, "-m", "authz", "serve", "--policy", str(work / "policies"),
                "--grpc-address", f"127.0.0.1:{port}", "--http-address", "",
                "--decision-log", "none", "--log-level", "warning", "--workers", "1"]
        if kind == "ours-asyncio":
            argv += ["--event-loop", "asyncio"]
        if kind == "ours-grpc-defaults":
            argv = ["env", "GRPC_EXPERIMENTS=", *argv]
        if kind == "baseline":
            # ``python -m`` puts the working directory first on sys.path, ahead of
            # the editable install of this checkout.
            cwd = baseline
    proc = subprocess.Popen(["taskset", "-c", str(cpu), *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=cwd)
    return proc, port


_cursors: dict[tuple[int, Path], int] = {}


def load(port: int, messages: Path, args: argparse.Namespace) -> dict[str, float]:
    """One loadgen run, continuing the message cycle where the last one on this
    server stopped (so distinct tokens stay distinct across rounds)."""
    out = subprocess.run(
        [PY, str(BENCH / "loadgen.py"), "--target", f"127.0.0.1:{port}", "--messages",
         str(messages), "--concurrency", str(args.concurrency), "--duration",
         str(args.duration), "--warmup", "1", "--cpu", str(args.load_cpu),
         "--start", str(_cursors.get((port, messages), 0))],
        capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(lines[-1])
    _cursors[(port, messages)] = int(result.get("next_start", 0))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["w1", "w4"],
                        choices=["w1", "w2", "w3", "w4"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=10_000, help="distinct tokens for w2")
    parser.add_argument("--spin-us", type=float, nargs="*", default=[],
                        help="also bare servers that busy-wait N us per call (what handler "
                        "time alone costs through the transport)")
    parser.add_argument("--naive", action="store_true",
                        help="also the naive servicer (PyJWT RS256 on every call)")
    parser.add_argument("--loops", action="store_true",
                        help="also bare on our runtime and ours on asyncio's loop")
    parser.add_argument("--grpc-defaults", action="store_true",
                        help="also ours on gRPC core's defaults (GRPC_EXPERIMENTS=)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also our server from another checkout (the A/B of a change)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    args = parser.parse_args()

    keys = workloads.make_keys()
    jwks = workloads.JwksServer(keys.jwks_document())
    work = Path(tempfile.mkdtemp(prefix="authz-ab-"))
    (work / "policies").mkdir()
    workloads.write_policy(work / "policies", workloads.main_policy(jwks.uri))
    (work / "issuer.pub.pem").write_bytes(keys.public_pem())
    wls = workloads.token_workloads(keys, args.tokens if "w2" in args.workloads else 10)
    messages = {}
    for name in args.workloads:
        messages[name] = work / f"{name}.bin"
        loadgen.write_messages(messages[name], wls[name].check_requests())
    kinds = ("bare", *(("bare-tuned",) if args.loops else ()),
             *(f"spin{us:g}" for us in args.spin_us), *(("naive",) if args.naive else ()),
             *(("ours-asyncio",) if args.loops else ()),
             *(("ours-grpc-defaults",) if args.grpc_defaults else ()),
             *(("baseline",) if args.baseline else ()), "ours")
    if args.baseline and not (args.baseline / "authz" / "__main__.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: not a checkout of this project")
    servers = {kind: start(kind, work, args.server_cpu, args.baseline) for kind in kinds}
    time.sleep(5)  # both ready (ours fetches its JWKS first)
    print(f"server CPU {args.server_cpu}, load CPU {args.load_cpu}, c={args.concurrency}, "
          f"{args.duration:g} s per measurement", flush=True)
    ratios: dict[str, list[float]] = {name: [] for name in args.workloads}
    vs_naive: dict[str, list[float]] = {name: [] for name in args.workloads}
    per_kind: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (vs bare, CPU us)
    try:
        for rnd in range(args.rounds):
            for name in args.workloads:
                rps: dict[str, float] = {}
                cpu_us: dict[str, float] = {}
                for kind, (proc, port) in servers.items():
                    before = cpu_seconds([proc.pid])
                    result = load(port, messages[name], args)
                    rps[kind] = result["rps"]
                    sent = result["requests"] + result.get("warmup_requests", 0)
                    cpu_us[kind] = (cpu_seconds([proc.pid]) - before) / max(sent, 1) * 1e6
                for kind in servers:
                    per_kind.setdefault((name, kind), []).append(
                        (rps[kind] / rps["bare"], cpu_us[kind]))
                ratio = rps["ours"] / rps["bare"]
                ratios[name].append(ratio)
                naive = ""
                if "naive" in rps:
                    vs_naive[name].append(rps["ours"] / rps["naive"])
                    naive = (f", naive {rps['naive']:,.0f} rps, ours/naive "
                             f"{vs_naive[name][-1]:.2f}")
                spins = "".join(
                    f", {kind} {rps[kind]:,.0f} rps (+{1e6 / rps[kind] - 1e6 / rps['bare']:.0f} "
                    "us/request)" for kind in kinds if kind.startswith("spin"))
                print(f"round {rnd + 1} {name}: bare {rps['bare']:,.0f} rps, "
                      f"ours {rps['ours']:,.0f} rps, ours/bare {ratio:.2f}{naive}{spins}",
                      flush=True)
                print("    vs bare: " + ", ".join(f"{k} {v / rps['bare']:.2f}"
                                                 for k, v in rps.items() if k != "bare")
                      + "; CPU us/request: " + ", ".join(f"{k} {v:.0f}"
                                                         for k, v in cpu_us.items()),
                      flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
        jwks.stop()
        shutil.rmtree(work, ignore_errors=True)
    for name, values in ratios.items():
        print(f"{name}: median ours/bare {statistics.median(values):.2f} "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")
        if vs_naive[name]:
            print(f"{name}: median ours/naive {statistics.median(vs_naive[name]):.2f} "
                  f"(rounds: {', '.join(f'{v:.2f}' for v in vs_naive[name])})")
        print(f"{name}: medians per server (vs bare, CPU us/request): " + ", ".join(
            f"{kind} {statistics.median(r for r, _ in got):.2f} "
            f"{statistics.median(c for _, c in got):.0f}"
            for (wl, kind), got in per_kind.items() if wl == name))


if __name__ == "__main__":
    main()
