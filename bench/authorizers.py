"""The authorizers a benchmark run measures, started and probed: ours (`authz serve`),
the reference servicers of bench/servers/ (bare, bare-tuned, naive), and Envoy in
front of one of them or with its own jwt_authn + RBAC and no ext_authz at all."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import loadgen
import workloads
from context import Context, Server
from procs import BENCH, PY, Proc, http_status, http_text, wait_for

from authz import grpc_env
from authz.testing.envoy_bootstrap import Route, bootstrap, envoy_binary
from authz.testing.jwt_authn import Rule, deny_without_principal_filter, envoy_jwt_filter
from authz.testing.ports import free_port

CHECK_PATH = loadgen.CHECK_PATH


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


HTTP_PREFIX = "/envoy"
"""The HTTP front door Envoy's ``http_service`` calls (``path_prefix``)."""
HTTP_SCOPE = {"x-authz-namespace": workloads.NAMESPACE}
"""The scope header the generated Envoy configuration adds to each check request."""


def http_check_once(port: int, token: str | None) -> int | None:
    """One check through the HTTP front door as Envoy's ``http_service`` sends it: the
    status (None when nothing answered)."""
    headers = {"host": workloads.HOST, **HTTP_SCOPE}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return http_status(f"http://127.0.0.1:{port}{HTTP_PREFIX}{workloads.PATH}", headers)


def grpc_ready(port: int, message: bytes) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            check_once(port, message, timeout=1.0)
        except Exception:
            return False
        return True

    return probe


def start_ours(ctx: Context, label: str, policy_dir: Path, *, workers: int | None = 1,
               cpus: Sequence[int] | None = None, http_check: bool = False) -> Server:
    """``authz serve`` pinned and ready; with ``http_check`` its HTTP front door too."""
    port, admin = free_port(), free_port()
    argv = [PY, "-m", "authz", "serve", "--policy", str(policy_dir),
            "--grpc-address", f"127.0.0.1:{port}", "--http-address", f"127.0.0.1:{admin}",
            "--decision-log", "none", "--log-format", "json", "--log-level", "warning"]
    http_port = free_port() if http_check else None
    if http_port is not None:
        argv += ["--http-check-address", f"127.0.0.1:{http_port}"]
    if ctx.has_workers and workers is not None:
        argv += ["--workers", str(workers)]
    if ctx.args.event_loop != "auto":
        argv += ["--event-loop", ctx.args.event_loop]
    ctx.started += 1
    proc = Proc(f"{ctx.started:02d}-{label}", argv, cpus or ctx.server_cpus, ctx.work)
    server = Server("ours", label, proc, port, admin, http_port)
    try:
        wait_for("/readyz", lambda: http_status(
            f"http://127.0.0.1:{admin}/readyz") == 200, proc)
        wait_for("a Check", grpc_ready(port, workloads.check_request(None)), proc, 30)
        if http_port is not None:
            wait_for("an HTTP check", lambda: http_check_once(http_port, None) is not None,
                     proc, 30)
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


def envoy_bootstrap(listener: int, admin: int, authz_port: int,
                    filters: Sequence[Mapping[str, Any]] | None,
                    **options: Any) -> dict[str, Any]:
    """The bootstrap of ``authz envoy-config`` (``options`` go to it as they are)."""
    config = bootstrap(listener_port=listener, admin_port=admin, authz_port=authz_port,
                       upstream_port=authz_port,
                       routes=[Route("/", {"namespace": workloads.NAMESPACE})],
                       filters=filters, **options)
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
    jwt = envoy_jwt_filter([Rule(workloads.ISSUER)], ctx.keys.jwks_document())
    return [jwt, deny_without_principal_filter(workloads.NAMESPACE, "require-jwt")]


def start_envoy(ctx: Context, label: str, authz_port: int,
                filters: Sequence[Mapping[str, Any]] | None,
                **options: Any) -> tuple[Proc, int]:
    binary = envoy_binary()
    assert binary is not None
    listener, admin = free_port(), free_port()
    path = ctx.work / f"envoy-{label}.json"
    path.write_text(json.dumps(envoy_bootstrap(listener, admin, authz_port, filters,
                                               **options)))
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
