"""Terminal summary for the Istio conformance suite (seed and per-case counts)."""

from __future__ import annotations

import pytest

from tests.conformance.harness import STATS, seed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STATS:
        return
    terminalreporter.section("authz conformance with Istio goldens")
    terminalreporter.write_line(f"seed {seed()} (rerun with AUTHZ_CONFORMANCE_SEED={seed()})")
    for line in STATS:
        terminalreporter.write_line(line)
