"""Write docs/cli.md from the parser itself, so the reference cannot drift.

Run: python docs/gen_cli.py   (tests/test_docs.py fails when the file is stale)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "cli.md"


def _walk(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[str, str]]:
    out = [(" ".join(path), parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.extend(_walk(child, [*path, name]))
    return out


def render() -> str:
    os.environ["COLUMNS"] = "100"
    for key in [k for k in os.environ if k.startswith("AUTHZ_")]:
        del os.environ[key]  # help shows env-derived defaults: render the real defaults
    from authz.cli import build_parser

    parts = ["# CLI reference\n",
             "Generated from `--help` by `python docs/gen_cli.py`; do not edit by hand.\n"]
    for name, text in _walk(build_parser(), ["authz"]):
        parts.append(f"## `{name}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
