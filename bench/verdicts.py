"""The targets of docs/benchmarks.md judged on a run's rows (PASS, FAIL or n/a), and
ours against the ceiling on our own runtime (a reference, not a target)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

from context import TARGET_CONCURRENCY
from procs import cpulist


def find(rows: Sequence[Mapping[str, Any]], section: str, server: str, workload: str,
         concurrency: int) -> Mapping[str, Any] | None:
    for r in rows:
        if (r["section"], r["server"], r["workload"], r["concurrency"]) == (
                section, server, workload, concurrency):
            return r
    return None


def ratio(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
          key: str = "rps") -> float | None:
    if a is None or b is None or not b.get(key) or a.get(key) is None:
        return None
    return float(a[key]) / float(b[key])


def per_round(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
              runs: str = "rps_runs") -> list[float]:
    """``a``'s RPS (or, with ``runs="p99_runs"``, p99) over ``b``'s round by round
    (``--repeat``): a target is the ratio of two median rows, and beside it these show
    how far one round moves it."""
    runs_a, runs_b = (a or {}).get(runs), (b or {}).get(runs)
    if not runs_a or not runs_b or len(runs_a) != len(runs_b):
        return []
    return [float(x) / float(y) for x, y in zip(runs_a, runs_b, strict=True) if y]


def runtime_reference(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ours against bare on our runtime, per workload measured with both, at
    concurrency 32."""
    out = []
    for name in ("w1", "w2", "w3", "w4"):
        ours = find(rows, "server", "ours", name, TARGET_CONCURRENCY)
        bare = find(rows, "server", "bare", name, TARGET_CONCURRENCY)
        bare_uv = find(rows, "server", "bare-tuned", name, TARGET_CONCURRENCY)
        r, loop_gain = ratio(ours, bare_uv), ratio(bare_uv, bare)
        if r is None or ours is None or bare_uv is None:
            continue
        detail = f"ours {ours['rps']:.0f} vs bare-tuned {bare_uv['rps']:.0f} rps = {r:.2f}x"
        if loop_gain is not None:
            detail += f" (bare-tuned / bare = {loop_gain:.2f}x)"
        out.append({"workload": name, "ratio": r, "bare_tuned_vs_bare": loop_gain,
                    "detail": detail})
    return out


SPREAD_BUSIEST = 0.75
"""Through Envoy with authz --workers 2, the busiest worker answers at most this
share of the Checks with the connection limits authz envoy-config writes."""


def targets(rows: Sequence[Mapping[str, Any]], workers: Mapping[str, Any] | None,
            elsewhere: int, spreading: Mapping[str, Any] | None = None,
            ) -> list[dict[str, Any]]:
    c = TARGET_CONCURRENCY
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str, rounds: Sequence[float] = ()) -> None:
        if rounds:
            detail += "; per round " + ", ".join(f"{v:.2f}" for v in rounds)
        out.append({"target": name, "result": "n/a" if ok is None else
                    ("PASS" if ok else "FAIL"), "detail": detail,
                    **({"per_round": list(rounds)} if rounds else {})})

    def get(server: str, wl: str) -> Mapping[str, Any] | None:
        return find(rows, "server", server, wl, c)

    def rps_target(wl: str, factor: float, ref: str) -> None:
        ours, other = get("ours", wl), get(ref, wl)
        r = ratio(ours, other)
        name = f"{wl} RPS ≥ {factor} x {ref}"
        if r is None or ours is None or other is None:
            add(name, None, "not measured")
            return
        add(name, r >= factor, f"{ours['rps']:.0f} vs {other['rps']:.0f} rps = {r:.2f}x",
            per_round(ours, other))

    rps_target("w1", 0.85, "bare")
    ours, bare = get("ours", "w1"), get("bare", "w1")
    if ours and bare:
        # Each server's p99 is the median of its rounds' p99s, not the p99 of its run
        # of median RPS: a disturbed 5 s window lowers RPS and raises p99 at once, so
        # the median-RPS run is often the disturbed one (docs/benchmarks.md, Targets).
        rounds = per_round(ours, bare, "p99_runs")
        ours_p99, bare_p99 = ((median(ours["p99_runs"]), median(bare["p99_runs"])) if rounds
                              else (ours["p99_ms"], bare["p99_ms"]))
        r = ours_p99 / bare_p99
        add("w1 p99 ≤ 1.2 x bare p99", r <= 1.2,
            f"{ours_p99:.2f} vs {bare_p99:.2f} ms"
            + (f" (medians of {len(rounds)} rounds)" if rounds else "") + f" = {r:.2f}x",
            rounds)
    else:
        add("w1 p99 ≤ 1.2 x bare p99", None, "not measured")
    rps_target("w2", 0.65, "bare")
    rps_target("w2", 1.3, "naive")
    rps_target("w3", 0.65, "bare")
    rps_target("w4", 0.85, "bare")
    small, big = get("ours-10", "w5"), get(f"ours-10+{elsewhere}", "w5")
    name = f"w5 RPS with {elsewhere:,} elsewhere ≥ 0.85 x 10 policies"
    r = ratio(big, small)
    if r is None or big is None or small is None:
        add(name, None, "not measured")
    else:
        add(name, r >= 0.85, f"{big['rps']:.0f} vs {small['rps']:.0f} rps = {r:.2f}x",
            per_round(big, small))
    name = f"w5 peak RSS with {10 + elsewhere:,} policies ≤ 150 MiB"
    if big is None:
        add(name, None, "not measured")
    else:
        add(name, big["peak_rss_mib"] <= 150, f"{big['peak_rss_mib']:.0f} MiB (VmHWM)")
    name = "2 workers ≥ 1.6 x 1 worker"
    runs = [r for r in (workers or {}).get("runs", []) if "rps" in r]
    one = next((r for r in runs if r["workers"] == 1), None)
    twos = [r for r in runs if r["workers"] == 2]
    if workers is None:
        add(name, None, "not measured (run with --workers-compare)")
    elif "skipped" in workers:
        add(name, None, f"skipped: {workers['skipped']}")
    elif one is None or not twos:
        add(name, None, "a run did not start")
    else:
        best = max(twos, key=lambda r: r["rps"])
        r2 = best["rps"] / one["rps"]
        detail = (f"{best['rps']:.0f} (CPUs {cpulist(best['cpus'])}) vs {one['rps']:.0f} rps "
                  f"= {r2:.2f}x")
        shared = bool(workers.get("shared_with_load"))
        if shared:
            # The target holds "with the load generator on its own core": not here.
            detail += ("; not judged: on this machine the second CPU also runs the load "
                       "generator, so the target cannot be shown here")
        add(name, None if shared else r2 >= 1.6, detail)
    http_targets(rows, add)
    if spreading is not None:
        spread_target(spreading, add)
    return out


HTTP_RPS_FACTORS = {"w1": 4.0, "w2": 2.0, "w3": 4.0, "w4": 4.0}
"""Our HTTP front door over our own gRPC Check, server only, concurrency 32: w2's
tokens are mostly new to the caches in a real deployment, so its bar is lower."""
E2E_HTTP_FACTOR = 0.8
"""Envoy's http_service ext_authz over Envoy's in-process jwt_authn + RBAC, w1 and w2."""
JWT_AUTHN = "jwt_authn+RBAC (in Envoy)"
E2E_HTTP = "http_service → ours"


def http_targets(rows: Sequence[Mapping[str, Any]], add: Any) -> None:
    """The HTTP front door's targets: RPS and p99 against our gRPC path (server only),
    and through Envoy against in-process jwt_authn (w3/w4 reported, not judged)."""
    c = TARGET_CONCURRENCY
    for wl, factor in HTTP_RPS_FACTORS.items():
        http, grpc = (find(rows, "server", k, wl, c) for k in ("ours-http", "ours"))
        name = f"{wl} HTTP RPS ≥ {factor:g} x gRPC"
        r = ratio(http, grpc)
        if r is None or http is None or grpc is None:
            add(name, None, "not measured")
        else:
            detail = f"{http['rps']:.0f} vs {grpc['rps']:.0f} rps = {r:.2f}x"
            cpu = ratio(grpc, http, "cpu_s_per_1k")
            if cpu is not None:
                # On a shared machine the server's CPU share varies; CPU per request does not.
                detail += f" (CPU per request {cpu:.2f}x less)"
            add(name, r >= factor, detail, per_round(http, grpc))
    pairs = [(wl, find(rows, "server", "ours-http", wl, c), find(rows, "server", "ours", wl, c))
             for wl in HTTP_RPS_FACTORS]
    measured = [(wl, h, g) for wl, h, g in pairs if h is not None and g is not None]
    name = "HTTP p99 ≤ gRPC p99 at concurrency 32 (w1-w4)"
    if not measured:
        add(name, None, "not measured")
    else:
        # Same requests in flight; the HTTP path answers more of them per second, so its
        # offered load is the higher of the two: a conservative comparison.
        add(name, all(h["p99_ms"] <= g["p99_ms"] for _, h, g in measured),
            "; ".join(f"{wl} {h['p99_ms']:.2f} vs {g['p99_ms']:.2f} ms" for wl, h, g in measured))
    for wl in ("w1", "w2", "w3", "w4"):
        http, jwt = (find(rows, "e2e", k, wl, c) for k in (E2E_HTTP, JWT_AUTHN))
        judged = wl in ("w1", "w2")
        name = (f"{wl} through Envoy: http_service RPS ≥ {E2E_HTTP_FACTOR} x in-process "
                "jwt_authn" if judged else f"{wl} through Envoy: http_service vs in-process "
                "jwt_authn (Envoy rejects in-process without a call: no target)")
        r = ratio(http, jwt)
        if r is None or http is None or jwt is None:
            add(name, None, "not measured")
        else:
            add(name, r >= E2E_HTTP_FACTOR if judged else None,
                f"{http['rps']:.0f} vs {jwt['rps']:.0f} rps = {r:.2f}x")


def spread_target(spreading: Mapping[str, Any], add: Any) -> None:
    """The busiest worker's share of one Envoy's Checks with the generated limits,
    beside the same with Envoy's defaults (the reason for the limits)."""
    name = f"through Envoy, busiest of 2 workers ≤ {SPREAD_BUSIEST:.0%} of Checks"
    runs = spreading.get("runs", [])
    if "skipped" in spreading and not runs:
        add(name, None, f"skipped: {spreading['skipped']}")
        return
    default = next((r for r in runs if r["config"].startswith("Envoy defaults")), None)
    limited = next((r for r in runs if not r["config"].startswith(("Envoy defaults",
                                                                    "http_service"))), None)
    http = next((r for r in runs if r["config"].startswith("http_service")), None)
    if limited is None:
        add(name, None, "not measured")
        return
    detail = (f"{limited['busiest_share']:.0%} over {limited['connections']} connections "
              f"({limited['rps']:.0f} rps)")
    if default is not None:
        detail += (f"; Envoy defaults: {default['busiest_share']:.0%} over "
                   f"{default['connections']} connection(s) ({default['rps']:.0f} rps)")
    ok = limited["busiest_share"] <= SPREAD_BUSIEST
    if http is not None:
        detail += (f"; http_service: {http['busiest_share']:.0%} over {http['connections']} "
                   f"connections ({http['rps']:.0f} rps)")
        ok = ok and http["busiest_share"] <= SPREAD_BUSIEST
    add(name, ok, detail)
