"""Docs that are generated or quote commands must match the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current() -> None:
    import sys

    import pytest

    if sys.version_info[:2] != (3, 11):
        pytest.skip("argparse formats help differently per Python version; "
                    "docs/cli.md is generated with Python 3.11")
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "cli.md").read_text() == module.render(), (
        "docs/cli.md is stale: run python docs/gen_cli.py")


def test_readme_flags_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    cli = (ROOT / "docs" / "cli.md").read_text()
    for line in readme.splitlines():
        if line.startswith("| `--"):
            flag = line.split("`")[1].split()[0]
            assert flag in cli, f"README documents {flag}, which authz does not have"
