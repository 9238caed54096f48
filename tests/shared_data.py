"""The shared reference corpus (Istio's goldens, samples and CRDs), found beside the repository.

It is not part of the repository: a checkout has it at ``../shared`` next to the
project root, and tests find it there and only there, never through a path of
one machine. Without it a test that needs it skips and says where it looked;
under CI (``CI=true``) it fails instead, so that a CI run without the corpus
cannot go green by skipping every conformance test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED = REPOSITORY.parent / "shared"


def shared_path(relative: str) -> Path:
    """Where ``relative`` would be in the corpus, whether or not it is there."""
    return SHARED / relative


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing_message(relative: str) -> str:
    return (f"shared reference corpus not found at ../shared beside the repository: "
            f"{shared_path(relative)} is missing")


def require_shared(relative: str) -> Path:
    """The path of ``relative`` under ``../shared``; skips the calling test when it is
    absent (fails under CI)."""
    path = shared_path(relative)
    if not path.exists():
        message = missing_message(relative)
        if in_ci():
            pytest.fail(f"{message} (CI=true: a missing corpus fails, it does not skip)",
                        pytrace=False)
        pytest.skip(message)
    return path


def have_shared(relative: str) -> bool:
    """For ``skipif`` marks and parametrization; pair with ``require_shared`` in the test
    so that CI fails rather than skips."""
    return shared_path(relative).exists()
