"""`make demo` shows the tutorial's answers and leaves nothing running."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from authz.testing.nginx import nginx_binary
from tests.e2e.rig import envoy_binary
from tests.shared_data import in_ci

pytestmark = pytest.mark.e2e
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"
STACK = 3 if nginx_binary() else 2
"""Processes the demo starts: authz and Envoy, and nginx when it is installed."""


def leftovers(workdir: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if workdir in line]


def workdir_of(output: str) -> str:
    match = re.search(r"demo files in (\S+)", output)
    assert match, output
    return match.group(1)


def load_demo() -> Any:
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_demo_ports_are_distinct() -> None:
    demo = load_demo()
    names = tuple(f"p{i}" for i in range(64))
    assert len(set(demo.free_ports(names).values())) == len(names)


def test_a_process_that_dies_at_startup_shows_its_log(tmp_path: Path) -> None:
    log = tmp_path / "dead.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", "print('cannot bind: in use'); exit(1)"],
                                stdout=out)
        proc.wait()
    with pytest.raises(SystemExit) as exc:
        asyncio.run(load_demo().wait_for("http://127.0.0.1:9/", "dead", proc, log))
    assert "dead exited early (code 1)" in str(exc.value)
    assert "cannot bind: in use" in str(exc.value)


@pytest.mark.parametrize(("outcome", "kept"), [
    pytest.param(0, False, id="clean run"),
    pytest.param(1, True, id="wrong answers"),
    pytest.param(RuntimeError("envoy exited early"), True, id="failure"),
])
def test_the_demo_directory_is_removed_only_after_a_clean_run(
        outcome: int | Exception, kept: bool, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    demo = load_demo()

    async def run(work: Path, envoy_bin: str, once: bool) -> int:
        (work / "envoy.log").write_text("the log a failed run keeps\n")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(demo, "ENVOY", Path(sys.executable))  # no Envoy needed here
    monkeypatch.setattr(demo, "demo", run)
    try:
        code = asyncio.run(demo.main(once=True))
    except RuntimeError:
        code = None
    assert code == (None if isinstance(outcome, Exception) else outcome)
    out = capsys.readouterr().out
    work = Path(workdir_of(out))
    assert (work / "envoy.log").exists() is kept
    assert (f"kept {work}" if kept else f"removed {work}") in out


def test_demo_once_prints_401_200_403_and_the_claim_pair() -> None:
    if envoy_binary() is None:
        pytest.skip("envoy not found")
    if in_ci():  # .ci/run installs nginx: the demo's auth_request part must run there
        assert nginx_binary() is not None, "nginx not found (CI=true: .ci/run installs it)"
    proc = subprocess.run([sys.executable, str(DEMO), "--once"], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    statuses = [line.split()[0] for line in proc.stdout.splitlines()
                if "GET /" in line and " via nginx " not in line]
    assert statuses == ["401", "200", "403", "403", "200"]
    # With nginx installed the tutorial's three answers again, through auth_request.
    via_nginx = [line.split()[0] for line in proc.stdout.splitlines() if " via nginx " in line]
    assert via_nginx == (["401", "200", "403"] if nginx_binary() else [])
    # nginx copied authz's claim header upstream (auth_request_set) and dropped the token.
    assert all('"user": "alice", "authorization": null' in line
               for line in proc.stdout.splitlines() if line.startswith("200") and " via " in line)
    assert f"stopped {STACK} processes" in proc.stdout
    assert leftovers(workdir_of(proc.stdout)) == []
    assert not Path(workdir_of(proc.stdout)).exists()


def test_demo_runs_until_ctrl_c_then_cleans_up() -> None:
    if envoy_binary() is None:
        pytest.skip("envoy not found")
    proc = subprocess.Popen([sys.executable, str(DEMO)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Ctrl-C" in line or not line:
            break
    assert any("curl -i" in line for line in [*lines, proc.stdout.readline()]), lines
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert f"stopped {STACK} processes" in output
    assert leftovers(workdir_of(output)) == []
    assert not Path(workdir_of(output)).exists()


def test_demo_stops_and_cleans_up_when_its_output_pipe_closes() -> None:
    # `make demo | head -1`: the reader goes away; no BrokenPipeError traceback, no
    # process left behind, no directory left behind.
    if envoy_binary() is None:
        pytest.skip("envoy not found")
    proc = subprocess.Popen([sys.executable, str(DEMO)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    workdir = workdir_of(proc.stdout.readline())
    proc.stdout.close()
    try:
        proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
    errors = proc.stderr.read()
    assert proc.returncode == 0, errors
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
    assert leftovers(workdir) == []
    assert not Path(workdir).exists()
