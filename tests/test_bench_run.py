"""bench/run.py's parts: a benchmark that breaks says so in its exit status, h2load's
summary is read in the unit it was printed in, and bench/ stands on the package alone."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# What h2load (nghttp2 1.52) prints for a 1 s run against bench/servers/bare.py.
H2LOAD_SUMMARY = """\
finished in 1.20s, 6273.00 req/s, 399.19KB/s
requests: 6273 total, 6273 started, 6273 done, 6273 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 6273 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 399.19KB (408770) total, 22.19KB (22725) headers (space savings 96.28%), 66.36KB data
                     min         max         mean         sd        +/- sd
time for request:      265us      7.53ms      1.27ms       416us    93.54%
time for connect:        0us         0us         0us         0us     0.00%
"""


@pytest.fixture
def bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/'s scripts import each other as top-level modules: for this test only."""
    monkeypatch.syspath_prepend(str(BENCH))


def test_bench_imports_nothing_from_the_tests() -> None:
    """What the benchmark shares with the suite lives in authz/testing/, so bench/ runs
    from an installed package without the tests beside it."""
    found = []
    for path in sorted(BENCH.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names
                      if n == "tests" or n.startswith("tests.")]
    assert not found, found


@pytest.mark.usefixtures("bench_on_path")
def test_h2load_latency_is_read_in_the_unit_h2load_printed() -> None:
    import load

    got = load.parse_h2load(H2LOAD_SUMMARY)
    assert got["rps"] == 6273.0 and got["succeeded"] == 6273 and got["failed"] == 0
    assert got["mean_ms"] == pytest.approx(1.27) and got["max_ms"] == pytest.approx(7.53)
    fast = H2LOAD_SUMMARY.replace("7.53ms      1.27ms", "980us      412us")
    assert load.parse_h2load(fast)["mean_ms"] == pytest.approx(0.412)
    slow = H2LOAD_SUMMARY.replace("7.53ms      1.27ms", "1.02s      1.27ms")
    assert load.parse_h2load(slow)["max_ms"] == pytest.approx(1020.0)


@pytest.mark.usefixtures("bench_on_path")
@pytest.mark.parametrize("text", [
    "", "connect: Connection refused\n",
    H2LOAD_SUMMARY.replace("1.27ms", "1.27 ms"),  # a unit it does not know
])
def test_h2load_output_that_does_not_parse_is_a_failure(text: str) -> None:
    import load

    with pytest.raises(RuntimeError, match="h2load output did not parse"):
        load.parse_h2load(text)


@pytest.mark.usefixtures("bench_on_path")
def test_the_exit_status_is_1_when_a_part_failed() -> None:
    import run

    assert run.exit_status({"failures": [], "targets": [{"result": "FAIL"}]}) == 0
    assert run.exit_status({"failures": ["server-only ours: start: TimeoutError"]}) == 1


def test_a_run_whose_servers_cannot_start_exits_1_and_lists_them(tmp_path: Path) -> None:
    """Every part fails (no taskset to pin the servers with): the report is still
    written, lists each failure, and the exit status says the run failed."""
    out = tmp_path / "out"
    env = {**os.environ, "PATH": str(tmp_path)}  # no taskset, no wrk, no h2load
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--skip-e2e", "--workers-compare",
         "--tokens", "20", "--elsewhere", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    markdown = (out / "latest.md").read_text()
    failures = markdown.split("## Failures", 1)[1].split("##", 1)[0]
    assert "server-only ours: start: FileNotFoundError" in failures, markdown
    assert "workers 1 worker on CPUs" in failures, markdown
    report = json.loads((out / "latest.json").read_text())
    assert len(report["failures"]) >= 5 and not report["rows"], report["failures"]
    assert "part(s) failed (exit 1)" in proc.stderr
