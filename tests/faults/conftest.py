"""Fault injection under steady load through real Envoy.

Short by default (part of ``make test``); ``AUTHZ_FAULTS=long`` repeats every
fault more often and holds each one longer. Every test adds rows to one results
table (what was done, requests, failures, convergence or recovery time), printed
at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import (  # noqa: F401 - fixtures shared with the e2e suite
    echo_upstream,
    pytest_runtest_makereport,
    start_authz,
    start_envoy,
)

pytestmark = pytest.mark.e2e

LONG = os.environ.get("AUTHZ_FAULTS", "") == "long"
ROUNDS = 5 if LONG else 1
"""How many times each fault is repeated."""


@dataclass(frozen=True)
class Row:
    fault: str
    requests: int
    failed: int
    """Requests answered other than the policy in force says (5xx, resets, wrong answers)."""
    seconds: float | None
    """Convergence (policy, key rotation) or recovery (restart) time; None: not applicable."""
    note: str = ""


RESULTS: list[Row] = []


@pytest.fixture
def results() -> Iterator[list[Row]]:
    yield RESULTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault injection results")
    write(f"{'fault':<44} {'requests':>8} {'failed':>6} {'seconds':>8}  note")
    for row in RESULTS:
        seconds = "-" if row.seconds is None else f"{row.seconds:.2f}"
        write(f"{row.fault:<44} {row.requests:>8} {row.failed:>6} {seconds:>8}  {row.note}")
