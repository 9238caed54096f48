"""The fixtures in tests/conftest.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def test_temporary_files_land_under_pytests_directory(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    made = Path(tempfile.mkdtemp(prefix="envoy-"))
    assert made.is_relative_to(base)
    assert Path(os.environ["TMPDIR"]).is_relative_to(base)
