"""``authz serve --workers N``: real processes sharing one port under a supervisor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.cli import build_parser, settings_from_args
from authz.config import ConfigError, Settings, available_cpus, parse_workers
from authz.observe import Metrics
from authz.testing.ports import free_port
from authz.workers import merge_metrics, settings_from_env
from tests.policies import deny_path

DENY_ADMIN = deny_path("%s", name="deny-path")


class Supervised:
    def __init__(self, proc: subprocess.Popen[bytes], log: Any, port: int, admin: int) -> None:
        self.proc, self.log, self.port, self.admin = proc, log, port, admin

    def output(self) -> str:
        return Path(self.log.name).read_text()

    async def get(self, path: str) -> tuple[int, str]:
        try:
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{self.admin}{path}") as r:
                return r.status, await r.text()
        except aiohttp.ClientError:
            return 0, ""

    async def readyz(self) -> dict[str, Any]:
        _, body = await self.get("/readyz")
        return json.loads(body) if body else {"ready": False}

    async def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool],
                   limit: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        while True:
            state = await self.readyz()
            if predicate(state):
                return state
            assert self.proc.poll() is None, f"supervisor exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"timed out: {what}: {state}\n{self.output()}"
            await asyncio.sleep(0.1)


@pytest.fixture
async def supervised(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Supervised]]]:
    started: list[Supervised] = []

    async def start(*args: str, workers: int = 2) -> Supervised:
        port, admin = free_port(), free_port()
        log = tempfile.NamedTemporaryFile(suffix=".log", delete=False)  # noqa: SIM115
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns once the child is forked
            [sys.executable, "-m", "authz", "serve", "--workers", str(workers),
             "--grpc-address", f"127.0.0.1:{port}", "--http-address", f"127.0.0.1:{admin}",
             "--log-format", "json", "--grace-period", "3", *args],
            stdout=log, stderr=subprocess.STDOUT)
        server = Supervised(proc, log, port, admin)
        started.append(server)
        await server.wait("all workers ready", lambda s: s["ready"])
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(20)
            except subprocess.TimeoutExpired:
                server.proc.kill()


def check(path: str) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.method = "GET"
    req.attributes.request.http.path = path
    req.attributes.request.http.host = "example.com"
    return req


async def status_on_new_connection(port: int, path: str) -> int:
    """One call per channel with its own subchannel pool: each is a new TCP connection
    (channels otherwise share one), which SO_REUSEPORT spreads over the workers."""
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        resp = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(check(path), timeout=5)
        return 200 if resp.status.code == 0 else int(resp.denied_response.status.code)


def decision_workers(output: str) -> set[int]:
    workers = set()
    for line in output.splitlines():
        if line.startswith("{") and '"decision"' in line:
            entry = json.loads(line)
            if "worker" in entry and entry.get("event") == "decision":
                workers.add(entry["worker"])
    return workers


def counter_total(text: str, family: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == family
               for s in f.samples if s.name == family + "_total")


async def test_workers_share_the_port_and_metrics_add_up(
        supervised: Callable[..., Awaitable[Supervised]], tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(DENY_ADMIN % "/admin")
    server = await supervised("--policy", str(tmp_path / "p.yaml"))
    state = await server.readyz()
    assert [w["ready"] for w in state["workers"]] == [True, True]
    assert len({w["pid"] for w in state["workers"]}) == 2

    statuses = await asyncio.gather(*(
        status_on_new_connection(server.port, "/admin" if i % 2 else "/") for i in range(40)))
    assert statuses == [200, 403] * 20
    for _ in range(50):  # decision lines are written in batches, within 50 ms
        if decision_workers(server.output()) == {0, 1}:
            break
        await asyncio.sleep(0.1)
    assert decision_workers(server.output()) == {0, 1}, "both workers answered"

    status, text = await server.get("/metrics")
    assert status == 200
    assert counter_total(text, "authz_check_requests") == 40
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["authz_workers"].samples[0].value == 2
    assert families["authz_ready"].samples[0].value == 1
    assert families["authz_check_duration_seconds"].type == "histogram"

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(
            service="envoy.service.auth.v3.Authorization"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_sighup_reloads_every_worker(
        supervised: Callable[..., Awaitable[Supervised]], tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(DENY_ADMIN % "/admin")
    server = await supervised("--policy", str(policy), "--watch-interval", "0")
    policy.write_text(DENY_ADMIN % "/other")
    server.proc.send_signal(signal.SIGHUP)
    await server.wait("every worker on snapshot 2", lambda s: s["snapshot_version"] == 2)
    statuses = await asyncio.gather(*(
        status_on_new_connection(server.port, p) for p in ["/admin", "/other"] * 10))
    assert statuses == [200, 403] * 10

    policy.write_text("kind: AuthorizationPolicy\nspec: [")
    server.proc.send_signal(signal.SIGHUP)
    state = await server.wait("the broken file reported", lambda s: bool(s["last_reload_error"]))
    assert state["ready"] and state["snapshot_version"] == 2  # last good keeps serving
    assert await status_on_new_connection(server.port, "/other") == 403


async def test_a_crashed_worker_is_restarted(
        supervised: Callable[..., Awaitable[Supervised]], tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(DENY_ADMIN % "/admin")
    server = await supervised("--policy", str(tmp_path / "p.yaml"))
    before = await server.readyz()
    victim = before["workers"][1]["pid"]
    os.kill(victim, signal.SIGKILL)
    # Once the victim's listener is gone (connections queued on it at the moment
    # of death are reset, as with any crash), the other worker takes every call.
    await server.wait("worker 1 gone", lambda s: s["workers"][1]["pid"] != victim
                      or not s["workers"][1]["alive"])
    assert await status_on_new_connection(server.port, "/admin") == 403
    after = await server.wait("worker 1 replaced", lambda s: s["ready"] and s["workers"][1][
        "pid"] not in (victim, None) and s["restarts"] == 1)
    assert after["workers"][0]["pid"] == before["workers"][0]["pid"]
    assert '"worker_exited"' in server.output()
    _, text = await server.get("/metrics")
    assert counter_total(text, "authz_worker_restarts") == 1
    statuses = await asyncio.gather(*(status_on_new_connection(server.port, "/admin")
                                      for _ in range(10)))
    assert statuses == [403] * 10


async def test_sigterm_drains_every_worker_and_exits_zero(
        supervised: Callable[..., Awaitable[Supervised]]) -> None:
    server = await supervised()
    pids = [w["pid"] for w in (await server.readyz())["workers"]]
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.proc.wait, 20) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    out = server.output()
    assert out.count('"server_stopped"') == 2 and '"supervisor_stopped"' in out


def test_bad_policies_stop_the_supervisor_with_the_workers_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nmetadata: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--workers", "2", "--policy", str(bad),
         "--grpc-address", f"127.0.0.1:{free_port()}", "--http-address", ""],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count(f"{bad}:1: kind: missing or invalid 'kind'") == 1
    assert "worker_failed_at_start" in proc.stderr


def test_a_port_owned_by_another_program_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "authz", "serve", "--workers", "2",
             "--grpc-address", f"127.0.0.1:{port}", "--http-address", ""],
            capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"cannot bind gRPC address 127.0.0.1:{port}" in proc.stderr


class _Cache:
    """A cache's counts, as ``CacheCollector`` reads them."""

    def __init__(self, hits: int, entries: int) -> None:
        self.hits, self.misses, self._entries = hits, 1, entries

    def __len__(self) -> int:
        return self._entries


def test_merge_adds_counters_and_histograms_and_merges_gauges_by_meaning() -> None:
    def worker(checks: int, in_flight: int, ready: int, version: int, age: float) -> str:
        """What a worker's /metrics says, written by the real families."""
        metrics = Metrics()
        for name in ("token_cache", "decision_cache"):
            metrics.watch_cache(name, name, lambda: _Cache(checks, 10 * checks))
        metrics.checks.labels("allow", "200", "allowed", "grpc").inc(checks)
        for _ in range(checks):
            metrics.check_latency.labels("grpc").observe(0.0005)
        metrics.in_flight.set(in_flight)
        metrics.ready.set(ready)
        metrics.snapshot_version.set(version)
        metrics.policies.labels("AuthorizationPolicy").set(7)
        age_family = ("# HELP authz_jwks_key_set_age_seconds age\n"
                      "# TYPE authz_jwks_key_set_age_seconds gauge\n"
                      f'authz_jwks_key_set_age_seconds{{source="a"}} {age}\n')
        return generate_latest(metrics.registry).decode() + age_family

    merged = {m.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in m.samples}
              for m in merge_metrics([worker(3, 1, 1, 4, 10.0), worker(5, 2, 0, 3, 30.0)])}
    assert merged["authz_check_requests"][
        ("authz_check_requests_total",
         (("decision", "allow"), ("reason", "allowed"), ("status", "200"),
          ("transport", "grpc")))] == 8
    assert merged["authz_check_duration_seconds"][
        ("authz_check_duration_seconds_bucket", (("le", "+Inf"), ("transport", "grpc")))] == 8
    assert merged["authz_check_in_flight"][("authz_check_in_flight", ())] == 3
    assert merged["authz_ready"][("authz_ready", ())] == 0  # ready only if every worker is
    assert merged["authz_policy_snapshot_version"][("authz_policy_snapshot_version", ())] == 3
    assert merged["authz_jwks_key_set_age_seconds"][
        ("authz_jwks_key_set_age_seconds", (("source", "a"),))] == 30.0
    assert merged["authz_policies_loaded"][
        ("authz_policies_loaded", (("kind", "AuthorizationPolicy"),))] == 7
    for cache in ("token_cache", "decision_cache"):  # each worker has its own caches
        assert merged[f"authz_{cache}_entries"][(f"authz_{cache}_entries", ())] == 80
        assert merged[f"authz_{cache}_lookups"][
            (f"authz_{cache}_lookups_total", (("result", "hit"),))] == 8


def test_workers_flag_env_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from_args(build_parser().parse_args(["serve", "--workers", "3"])).workers == 3
    auto = settings_from_args(build_parser().parse_args(["serve"])).workers
    assert auto == available_cpus() >= 1
    monkeypatch.setenv("AUTHZ_WORKERS", "1")
    assert settings_from_args(build_parser().parse_args(["serve"])).workers == 1
    assert parse_workers("auto") == available_cpus()
    assert available_cpus() <= len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="--workers"):
        parse_workers("0")
    with pytest.raises(ConfigError, match="--workers"):
        parse_workers("many")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", "0"])


def test_worker_settings_survive_the_trip_through_the_environment() -> None:
    import dataclasses

    settings = Settings(policy_paths=("a", "b"), trust_domain_aliases=("x",), workers=1,
                        reuse_port=True, http_address="unix:@authz-1-worker-0",
                        jwks_ca_file="/ca.pem", drain_delay=1.5)
    assert settings_from_env(json.dumps(dataclasses.asdict(settings))) == settings


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its (dead) parent's reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_workers_do_not_outlive_a_killed_supervisor(
        supervised: Callable[..., Awaitable[Supervised]]) -> None:
    server = await supervised()
    pids = [w["pid"] for w in (await server.readyz())["workers"]]
    server.proc.kill()  # SIGKILL: no chance to forward anything
    server.proc.wait()
    deadline = time.monotonic() + 20
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        alive = [pid for pid in alive if _running(pid)]
    assert alive == [], "workers outlived their supervisor"
