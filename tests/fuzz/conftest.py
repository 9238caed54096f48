"""Fuzzing budget: a few seconds in ``make test``, minutes with ``AUTHZ_FUZZ=long``.

Each target is a Hypothesis property run by ``fuzz(prop)``. Short mode runs it once
with ``SHORT_EXAMPLES`` examples. Long mode (``AUTHZ_FUZZ=long``) runs it again and
again, each time with fresh random examples, until its share of
``AUTHZ_FUZZ_SECONDS`` (default 600, split evenly over the targets) is spent.
Any exception a target does not expect fails the run with the failing input,
shrunk. The examples run per target are printed at the end of the session.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

LONG = os.environ.get("AUTHZ_FUZZ", "") == "long"
TARGETS = 8
"""How many targets share the long budget (the ``fuzz(...)`` calls in tests/fuzz)."""
BUDGET = float(os.environ.get("AUTHZ_FUZZ_SECONDS", "600")) / TARGETS
SHORT_EXAMPLES = 60
LONG_BATCH = 2_000

COUNTS: Counter[str] = Counter()
"""Examples run per target in this session (the long run's numbers)."""

SETTINGS = settings(
    max_examples=LONG_BATCH if LONG else SHORT_EXAMPLES,
    deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)


def fuzz(prop: Callable[[], Any]) -> None:
    """Run the Hypothesis property ``prop`` for the short or the long budget (the
    property counts its own examples in ``COUNTS``)."""
    test = SETTINGS(prop)
    end = time.monotonic() + BUDGET
    while True:
        test()
        if not LONG or time.monotonic() >= end:
            return


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if COUNTS:
        mode = "long" if LONG else "short"
        line = ", ".join(f"{name} {count}" for name, count in sorted(COUNTS.items()))
        terminalreporter.write_line(f"fuzz ({mode}): examples per target: {line}")


@pytest.fixture(autouse=True)
def _no_tracebacks_logged(capfd: pytest.CaptureFixture[str]) -> Any:
    """A target that logs a traceback (an error caught and logged) fails too."""
    yield
    out, err = capfd.readouterr()
    assert "Traceback (most recent call last)" not in out + err
    assert "check_failed" not in out + err
