"""The committed authz/_proto must be exactly what `make proto` makes from proto/."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generate(out: Path) -> None:
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(out)


def _tree(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) is needed")
    fresh = tmp_path / "_proto"
    _generate(fresh)
    committed = _tree(ROOT / "authz" / "_proto")
    regenerated = _tree(fresh)
    assert sorted(committed) == sorted(regenerated), "file set differs: run `make proto`"
    stale = [n for n in committed if not filecmp.cmp(committed[n], regenerated[n], shallow=False)]
    assert not stale, f"stale generated files, run `make proto`: {stale}"


def test_every_vendored_proto_is_recorded_in_readme() -> None:
    readme = (ROOT / "proto" / "README.md").read_text()
    for proto in (ROOT / "proto").rglob("*.proto"):
        assert proto.relative_to(ROOT / "proto").as_posix() in readme, proto
