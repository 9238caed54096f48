"""The `authz` command as a user runs it: flags, env twins, errors, signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz import __version__, grpc_env
from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.cli import build_parser, main, settings_from_args
from authz.testing.ports import free_port


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authz", *args], capture_output=True,
                          text=True, timeout=60, **kw)  # type: ignore[call-overload]


def test_version_and_help() -> None:
    assert run("--version").stdout.strip() == f"authz {__version__}"
    out = run("--help").stdout
    assert "serve" in out and "ext_authz" in out
    serve_help = run("serve", "--help").stdout
    for flag in ("--policy", "--grpc-address", "--http-address", "--root-namespace",
                 "--log-format", "--log-level", "--grace-period", "AUTHZ_GRPC_ADDRESS"):
        assert flag in serve_help


def test_no_command_prints_help_and_fails() -> None:
    proc = run()
    assert proc.returncode == 2 and "usage: authz" in proc.stdout


def test_defaults_keep_admin_on_loopback() -> None:
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    assert settings.http_address == "127.0.0.1:9090"
    assert settings.grpc_address == "0.0.0.0:9000"
    assert settings.root_namespace == "istio-system"


def test_env_twins_and_flag_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHZ_GRPC_ADDRESS", "127.0.0.1:7000")
    monkeypatch.setenv("AUTHZ_POLICY", f"a.yaml{os.pathsep}dir")
    monkeypatch.setenv("AUTHZ_GRACE_PERIOD", "2.5")
    monkeypatch.setenv("AUTHZ_LOG_FORMAT", "json")
    s = settings_from_args(build_parser().parse_args(["serve"]))
    assert (s.grpc_address, s.policy_paths, s.grace_period, s.log_format) == (
        "127.0.0.1:7000", ("a.yaml", "dir"), 2.5, "json")
    s = settings_from_args(build_parser().parse_args(
        ["serve", "--grpc-address", "127.0.0.1:7001", "--policy", "b.yaml"]))
    assert (s.grpc_address, s.policy_paths) == ("127.0.0.1:7001", ("b.yaml",))


@pytest.mark.parametrize("flag", ["--grpc-address", "--http-check-address", "--http-address"])
def test_bad_address_is_a_usage_error(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", flag, "nonsense"]) == 2
    assert capsys.readouterr().err == (
        f"authz: error: {flag}: expected HOST:PORT, got 'nonsense'\n")


def test_bad_policy_refuses_to_start_and_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: X\nmetadata: {name: ok}\n---\napiVersion: v1\nmetadata: {}\n"
    )
    proc = run("serve", "--grpc-address", f"127.0.0.1:{free_port()}", "--http-address", "",
               "--policy", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:5: kind: missing or invalid 'kind'" in proc.stderr
    assert "server_started" not in proc.stderr  # refused before binding any port


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_mistyped_policy_path_refuses_to_start(tmp_path: Path, workers: str) -> None:
    # Not an empty policy set that allows everything: the path is named and nothing binds.
    missing = tmp_path / "polices"
    proc = run("serve", "--grpc-address", f"127.0.0.1:{free_port()}", "--http-address", "",
               "--log-format", "json", "--workers", workers, "--policy", str(missing))
    assert proc.returncode == 2, proc.stderr
    plain = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
    assert plain == ["authz: policies rejected:", f"policy path does not exist: {missing}"]
    assert "server_started" not in proc.stderr


def _serving(port: int) -> bool:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def _start(port: int, *extra: str) -> subprocess.Popen[str]:
    # Output goes to a file: a pipe nobody reads would fill up and block the server.
    out = tempfile.NamedTemporaryFile(mode="w+")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", "--grpc-address", f"127.0.0.1:{port}",
         "--http-address", "", "--log-format", "json", *extra],
        stdout=out, stderr=out, text=True,
    )
    proc.output = out  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while not _serving(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.output.seek(0)  # type: ignore[attr-defined]
            raise AssertionError(f"server never became SERVING: {proc.output.read()}")  # type: ignore[attr-defined]
        time.sleep(0.1)
    if "--workers" in extra and extra[extra.index("--workers") + 1] != "1":
        # Health answered from one worker; wait for the supervisor to have them all.
        while '"supervisor_ready"' not in Path(out.name).read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "supervisor not ready"
            time.sleep(0.1)
    return proc


def _finish(proc: subprocess.Popen[str]) -> str:
    """Make sure the server is gone; everything it printed."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.output.seek(0)  # type: ignore[attr-defined]
    return str(proc.output.read())  # type: ignore[attr-defined]


def _answered_by_server(stderr: str, workers: int) -> int:
    """Checks answered, summed over every server process's ``server_stopped`` line."""
    counts = [int(json.loads(line)["checks_answered"]) for line in stderr.splitlines()
              if '"server_stopped"' in line]
    assert len(counts) == workers, f"expected {workers} server_stopped lines in:\n{stderr}"
    return sum(counts)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_empty_policy_folder_is_said_loudly_at_start_and_on_readyz(
        tmp_path: Path, workers: str) -> None:
    admin = free_port()
    proc = _start(free_port(), "--policy", str(tmp_path), "--workers", workers,
                  "--http-address", f"127.0.0.1:{admin}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as resp:
            body = json.loads(resp.read())
    finally:
        output = _finish(proc)
    warning = (f"no AuthorizationPolicy loaded in {tmp_path}: every request that passes "
               "authentication is allowed")
    assert body["policies"]["allow_all"] is True and body["policies"]["warnings"] == [warning]
    logged = [json.loads(line) for line in output.splitlines() if "policies_allow_all" in line]
    assert [(e["level"], e["warning"]) for e in logged] == [("warning", warning)] * int(workers)


@pytest.mark.parametrize(("workers", "last"), [("1", "server_ready"), ("2", "supervisor_ready")])
def test_start_up_ends_with_the_ready_line_the_readme_names(workers: str, last: str) -> None:
    # README, "make run": one process ends with server_ready; with workers, each logs
    # its own server_ready and the supervisor's supervisor_ready is the last line.
    policies = Path(__file__).resolve().parents[1] / "examples" / "policies"
    proc = _start(free_port(), "--policy", str(policies), "--workers", workers)
    try:
        deadline = time.monotonic() + 30
        while f'"{last}"' not in Path(proc.output.name).read_text():  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, f"no {last} line"
            time.sleep(0.1)
        time.sleep(0.5)  # nothing else follows on its own
        events = [json.loads(line)["event"] for line in
                  Path(proc.output.name).read_text().splitlines()]  # type: ignore[attr-defined]
    finally:
        _finish(proc)
    assert events[-1] == last and events.count("server_ready") == int(workers), events


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
@pytest.mark.parametrize("follow_health", [True, False], ids=["health-aware", "blind-client"])
def test_sigterm_under_load_loses_no_call_and_exits_zero(follow_health: bool,
                                                         workers: int) -> None:
    """A client that follows health (as Envoy's health checker does) sees no failure
    during --drain-delay; a blind client may be refused after the listener stops,
    but every call the server accepted is answered before exit 0. With --workers the
    supervisor drains every worker the same way."""
    port = free_port()
    proc = _start(port, "--drain-delay", "0.5", "--workers", str(workers))
    try:
        answered, failed = asyncio.run(_load_then_sigterm(port, proc, follow_health))
        assert proc.wait(timeout=30) == 0
    finally:
        stderr = _finish(proc)
    assert answered > 50
    assert answered == _answered_by_server(stderr, workers), \
        "an answered call never reached the client"
    if follow_health:
        assert failed == [], stderr
    # A blind client's calls after the listener closed fail with whatever the
    # transport reports (UNAVAILABLE, CANCELLED, a reset); none of them was
    # accepted, which the equality of answered counts above proves.


async def _load_then_sigterm(
    port: int, proc: subprocess.Popen[str], follow_health: bool
) -> tuple[int, list[grpc.StatusCode]]:
    answered = 0
    failed: list[grpc.StatusCode] = []
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)

        async def watch_health() -> None:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
            async for update in watch:
                if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    stop.set()
                    return

        async def worker() -> None:
            nonlocal answered
            while not stop.is_set():
                try:
                    resp = await stub.Check(external_auth_pb2.CheckRequest(), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    failed.append(exc.code())
                    await asyncio.sleep(0.01)
                    continue
                assert resp.WhichOneof("http_response") == "ok_response"
                answered += 1

        watcher = asyncio.create_task(watch_health()) if follow_health else None
        workers = [asyncio.create_task(worker()) for _ in range(8)]
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*workers)
        if watcher:
            watcher.cancel()
    return answered, failed


@pytest.mark.parametrize(("flags", "loop", "servers"), [
    # One process said so: the default --workers is one per CPU.
    (("--workers", "1"), "uvloop", 1),
    (("--event-loop", "asyncio", "--workers", "1"), "asyncio", 1),
    (("--workers", "2"), "uvloop", 2),
    (("--event-loop", "asyncio", "--workers", "2"), "asyncio", 2),
], ids=["default-uvloop", "asyncio", "workers-uvloop", "workers-asyncio"])
def test_the_server_runs_on_the_event_loop_it_was_given(flags: tuple[str, ...], loop: str,
                                                       servers: int) -> None:
    pytest.importorskip("uvloop", reason="uvloop is a dependency on CPython/Linux/macOS")
    port, admin = free_port(), free_port()
    proc = _start(port, "--http-address", f"127.0.0.1:{admin}", *flags)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = external_auth_pb2_grpc.AuthorizationStub(ch).Check(
                external_auth_pb2.CheckRequest(), timeout=5)
        assert resp.WhichOneof("http_response") == "ok_response"
        # /readyz says which loop answers Checks: the workers' under a supervisor.
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as reply:
            ready = json.loads(reply.read())
        assert ready["event_loop"] == loop
        # gRPC core's environment (authz/grpc_env.py) reached every serving process.
        experiments = os.environ.get("GRPC_EXPERIMENTS", grpc_env.DEFAULTS["GRPC_EXPERIMENTS"])
        assert ready["grpc_experiments"] == experiments
        if servers > 1:
            assert [w["event_loop"] for w in ready["workers"]] == [loop] * servers
            assert [w["grpc_experiments"] for w in ready["workers"]] == [experiments] * servers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        output = _finish(proc)
    started = [json.loads(line) for line in output.splitlines() if '"server_started"' in line]
    assert [s["event_loop"] for s in started] == [loop] * servers
    assert [s["grpc_experiments"] for s in started] == [experiments] * servers


def test_event_loop_env_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from_args(build_parser().parse_args(["serve"])).event_loop == "auto"
    monkeypatch.setenv("AUTHZ_EVENT_LOOP", "asyncio")
    assert settings_from_args(build_parser().parse_args(["serve"])).event_loop == "asyncio"


def test_a_bad_number_in_an_environment_variable_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AUTHZ_GRACE_PERIOD", "abc")
    with pytest.raises(SystemExit) as exc:
        main(["serve"])
    assert exc.value.code == 2
    assert "invalid value 'abc' (from --grace-period or AUTHZ_GRACE_PERIOD)" in \
        capsys.readouterr().err
    # Other commands do not read serve's variables.
    assert main(["validate", "examples/policies"]) == 0


def test_a_bad_worker_count_says_why(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AUTHZ_WORKERS", "many")
    with pytest.raises(SystemExit) as exc:
        main(["serve"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid value 'many' (from --workers or AUTHZ_WORKERS)" in err
    assert "expected a number or 'auto'" in err


def test_cache_sizes_come_from_flags_or_their_env_twins(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from authz.server import AuthzServer

    defaults = settings_from_args(build_parser().parse_args(["serve"]))
    assert (defaults.token_cache_size, defaults.rejected_token_cache_size,
            defaults.decision_cache_size, defaults.scope_cache_size) == (
        10_000, 1_000, 12_500, 4_096)
    monkeypatch.setenv("AUTHZ_TOKEN_CACHE_SIZE", "0")
    monkeypatch.setenv("AUTHZ_DECISION_CACHE_SIZE", "50")
    settings = settings_from_args(build_parser().parse_args(
        ["serve", "--decision-cache-size", "70", "--scope-cache-size", "8",
         "--rejected-token-cache-size", "3"]))
    caches = AuthzServer(settings).policy_options.caches
    assert (caches.tokens, caches.rejected_tokens, caches.decisions, caches.scopes) == (
        0, 3, 70, 8)  # the flag wins over its variable
    monkeypatch.setenv("AUTHZ_SCOPE_CACHE_SIZE", "-1")
    assert main(["serve"]) == 2
    assert "--scope-cache-size must be >= 0" in capsys.readouterr().err


def test_a_jwks_refresh_interval_below_30s_is_honoured_and_below_1s_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    # docs/configuration.md: honoured as given down to 1 s; the 30 s floor bounds only
    # a server's Cache-Control max-age (tests/authn/test_jwks.py runs the refresh).
    from authz.server import AuthzServer

    settings = settings_from_args(build_parser().parse_args(
        ["serve", "--jwks-refresh-interval", "5"]))
    jwks = AuthzServer(settings).jwks.settings
    assert (jwks.refresh_interval, jwks.min_refresh_interval) == (5.0, 30.0)
    assert main(["serve", "--jwks-refresh-interval", "0.5"]) == 2
    assert capsys.readouterr().err == (
        "authz: error: --jwks-refresh-interval must be >= 1 (seconds)\n")
