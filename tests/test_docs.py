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


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower-cased, punctuation dropped, spaces to '-'."""
    import re

    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _links(doc: Path) -> list[str]:
    """Targets of inline Markdown links outside code blocks and code spans."""
    import re

    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_doc_is_linked_from_the_readme() -> None:
    """A doc nobody can reach from the README is a doc nobody reads."""
    linked = {(ROOT / target.split("#")[0]).resolve() for target in _links(ROOT / "README.md")}
    docs = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "docs" / "design").glob("*.md"))
    assert len(docs) >= 15
    missing = [d.relative_to(ROOT).as_posix() for d in docs if d.resolve() not in linked]
    assert not missing, f"README.md links none of: {missing}"


def test_relative_links_and_anchors_resolve() -> None:
    """Moving or renaming a doc or a heading must not leave dead links behind."""
    import re

    anchors: dict[Path, set[str]] = {}
    for doc in _markdown_files():
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        anchors[doc.resolve()] = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}
    broken = []
    checked = 0
    for doc in _markdown_files():
        for target in _links(doc):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc.resolve()
            checked += 1
            if not resolved.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors.get(resolved, ()):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert checked >= 50
    assert not broken, "\n".join(broken)


def test_docs_name_no_issue_numbers() -> None:
    """Docs describe the product; tracker references belong in commits, not here."""
    import re

    hits = [f"{doc.relative_to(ROOT)}:{n}: {line.strip()}"
            for doc in _markdown_files()
            for n, line in enumerate(doc.read_text().splitlines(), 1)
            if re.search(r"\b[Ii]ssue #?[0-9]+\b", line)]
    assert not hits, "\n".join(hits)
