"""Fixtures every test shares."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def scratch_under_pytest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Process logs, Envoy bootstraps and demo directories go under pytest's own
    temporary directory instead of piling up in /tmp: pytest keeps the last three
    runs (a failed run's logs included) and removes older ones. ``TMPDIR`` carries
    it to the processes tests start."""
    scratch = str(tmp_path_factory.mktemp("scratch", numbered=False))
    saved_env, saved_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = scratch, scratch
    try:
        yield
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
