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


def _blocks(kind: str) -> list[tuple[str, str]]:
    import re

    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for match in re.finditer(rf"```{kind}\n(.*?)```", doc.read_text(), re.S):
            out.append((doc.relative_to(ROOT).as_posix(), match.group(1)))
    return out


def test_every_documented_authz_command_parses() -> None:
    """Flags in docs must exist: each `$ authz ...` line goes through the real parser."""
    import shlex

    import pytest

    from authz.cli import build_parser

    parser = build_parser()
    seen = 0
    for doc, block in _blocks("console"):
        for line in block.splitlines():
            if not line.startswith("$ authz "):
                continue
            args = shlex.split(line[2:].split("  #")[0].split(" > ")[0])[1:]
            try:
                parser.parse_args(args)
            except SystemExit:
                pytest.fail(f"{doc}: `{line}` does not parse")
            seen += 1
    assert seen >= 15


def test_every_documented_yaml_block_parses_and_policies_validate() -> None:
    import yaml

    from authz.pipeline.snapshot import compile_snapshot
    from authz.policy.load import parse_text

    for doc, block in _blocks("yaml"):
        docs = [d for d in yaml.safe_load_all(block) if d is not None]
        assert docs, doc
        if any(isinstance(d, dict) and str(d.get("apiVersion", "")).startswith(
                "security.istio.io/") for d in docs):
            compile_snapshot(parse_text(block, doc), 1)  # raises with file:line on error
