"""The layering contracts in pyproject.toml ([tool.importlinter]) hold, and they bite.

Imports point down the request's flow (docs/architecture.md); import-linter checks
it in ``make lint`` and here. The second test adds one backwards import to a copy
of the package and expects the contracts to fail on it, so a contract that checks
nothing cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_package_keeps_its_layers_and_has_no_cycles() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "backwards"), [
    ("request/view.py", "import authz.pipeline.snapshot"),  # the model reaching up
    ("policy/load.py", "import authz.authn.engine"),  # a model importing an engine
    ("rbac/engine.py", "import authz.authn.engine"),  # one engine importing its sibling
    ("workers.py", "import authz.cli"),  # the old cli <-> workers cycle
])
def test_a_backwards_import_breaks_the_contracts(
        tmp_path: Path, module: str, backwards: str) -> None:
    copy = tmp_path / "authz"
    shutil.copytree(ROOT / "authz", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{backwards}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout or "broken" in done.stdout
