"""How tests find the shared reference corpus (tests/shared_data.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import shared_data

TESTS = Path(__file__).resolve().parent


def test_the_corpus_is_looked_for_beside_the_repository() -> None:
    beside = TESTS.parent.parent / "shared"
    assert beside == shared_data.SHARED
    assert shared_data.shared_path("conformance/x") == beside / "conformance" / "x"


def test_a_missing_corpus_skips_and_says_where_it_looked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shared_data, "SHARED", tmp_path / "shared")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        shared_data.require_shared("conformance/istio-crds")
    assert str(skipped.value) == (
        "shared reference corpus not found at ../shared beside the repository: "
        f"{tmp_path / 'shared' / 'conformance' / 'istio-crds'} is missing")


def test_under_ci_a_missing_corpus_fails(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setattr(shared_data, "SHARED", tmp_path / "shared")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: a missing corpus fails"):
        shared_data.require_shared("conformance/istio-crds")


def test_a_present_file_is_returned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "shared" / "conformance").mkdir(parents=True)
    (tmp_path / "shared" / "conformance" / "a.yaml").write_text("x")
    monkeypatch.setattr(shared_data, "SHARED", tmp_path / "shared")
    monkeypatch.setenv("CI", "true")
    assert shared_data.require_shared("conformance/a.yaml").read_text() == "x"


def test_no_test_finds_the_corpus_another_way() -> None:
    """No machine path, and no ``.../"shared"`` of its own outside tests/shared_data.py."""
    bad = []
    for path in TESTS.rglob("*.py"):
        if path.name in {"shared_data.py", "test_shared_data.py"}:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""["']/work/|/ ?["']shared["']|parents\[\d\]\s*/\s*["']shared""",
                         line):
                bad.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert not bad, "\n".join(bad)
