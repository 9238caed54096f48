"""The fixtures in tests/conftest.py."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import structlog
import structlog.contextvars
import structlog.testing


def test_temporary_files_land_under_pytests_directory(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    made = Path(tempfile.mkdtemp(prefix="envoy-"))
    assert made.is_relative_to(base)
    assert Path(os.environ["TMPDIR"]).is_relative_to(base)


def test_a_process_started_elsewhere_imports_this_checkout(tmp_path: Path) -> None:
    probe = "import authz, tests.shared_data; print(authz.__file__, tests.shared_data.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    repository = Path(__file__).resolve().parents[1]
    assert [Path(p).resolve() for p in out] == [repository / "authz" / "__init__.py",
                                                repository / "tests" / "shared_data.py"]


def test_a_command_run_in_process_configures_logging_for_the_whole_process() -> None:
    """The first of a pair: the next test fails unless the fixture
    ``logging_configuration_as_it_was`` undoes this (pytest runs a file in order)."""
    from authz.observe import configure_logging

    configure_logging("json", "error")
    assert structlog.get_config()["cache_logger_on_first_use"] is True


def test_the_next_test_sees_info_lines_again() -> None:
    with structlog.testing.capture_logs() as logs:
        structlog.get_logger("authz.test").info("seen")
    assert [entry["event"] for entry in logs] == ["seen"]


# Each pair below: the first test leaves process-wide state changed, the second (pytest
# runs a file in order) fails unless an autouse fixture of tests/conftest.py put it back.
# The first of each pair also checks the state really changed, so neither can pass idly.


def test_a_worker_binds_context_that_every_later_log_line_would_carry() -> None:
    structlog.contextvars.bind_contextvars(worker=3)
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as logs:
        structlog.get_logger("authz.test").info("bound")
    assert logs[0]["worker"] == 3


def test_the_next_test_logs_without_that_context() -> None:
    assert structlog.contextvars.get_contextvars() == {}
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as logs:
        structlog.get_logger("authz.test").info("unbound")
    assert "worker" not in logs[0]


FREEZE_COUNT_BEFORE: list[int] = []


def test_serving_in_process_freezes_the_heap() -> None:
    from authz import heap

    FREEZE_COUNT_BEFORE.append(gc.get_freeze_count())
    heap.settle()
    assert gc.get_freeze_count() > FREEZE_COUNT_BEFORE[0]


def test_the_next_test_finds_the_heap_as_it_was() -> None:
    assert FREEZE_COUNT_BEFORE, "runs after the test that freezes"
    assert gc.get_freeze_count() == FREEZE_COUNT_BEFORE[0]


def test_code_run_in_process_sets_an_environment_variable() -> None:
    assert "AUTHZ_TEST_LEAK" not in os.environ
    os.environ["AUTHZ_TEST_LEAK"] = "1"
    os.environ.pop("TMPDIR")


def test_the_next_test_sees_the_environment_as_it_was() -> None:
    assert "AUTHZ_TEST_LEAK" not in os.environ
    assert "TMPDIR" in os.environ  # removed by the previous test, put back
