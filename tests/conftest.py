"""Fixtures every test shares."""

from __future__ import annotations

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
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", scratch)
        patch.setattr(tempfile, "tempdir", scratch)
        yield
