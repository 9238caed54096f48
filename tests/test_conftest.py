"""The fixtures in tests/conftest.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import structlog
import structlog.testing


def test_temporary_files_land_under_pytests_directory(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    made = Path(tempfile.mkdtemp(prefix="envoy-"))
    assert made.is_relative_to(base)
    assert Path(os.environ["TMPDIR"]).is_relative_to(base)


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
