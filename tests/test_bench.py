"""The benchmark scripts run and print a well-formed table (numbers are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_policy_scale_quick_run_prints_table_and_json() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "policy_scale.py"), "--requests", "300",
         "--elsewhere", "50"],
        capture_output=True, text=True, timeout=300,
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == "| policies | p50 µs | p99 µs | mean µs |", proc.stdout + proc.stderr
    assert lines[2].startswith("| 10 in scope |") and "50 elsewhere" in lines[3]
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["ten_in_scope"]["decision_status"] == result["plus_elsewhere"][
        "decision_status"]
    assert result["mean_ratio"] > 0
