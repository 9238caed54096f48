"""Run docs/walkthrough.md: its files are written, its `$ authz` commands executed."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.md"


def steps(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    blocks = re.finditer(r"(<!-- file: (\S+) -->\n)?```(\w+)\n(.*?)```", text, re.S)
    for block in blocks:
        if block.group(2):
            out.append(("file", f"{block.group(2)}\n{block.group(4)}"))
        elif block.group(3) == "console":
            out += [("run", line[2:]) for line in block.group(4).splitlines()
                    if line.startswith("$ authz ")]
    return out


def test_walkthrough_commands_work(tmp_path: Path) -> None:
    ran = []
    for kind, body in steps(DOC.read_text()):
        if kind == "file":
            name, content = body.split("\n", 1)
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(content)
            continue
        command, _, comment = body.partition("  # ")
        args = shlex.split(command)
        target = None
        if ">" in args:
            target = args[args.index(">") + 1]
            args = args[: args.index(">")]
        proc = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        expected = 1 if comment.strip() == "exit 1" else 0
        assert proc.returncode == expected, f"{body}\n{proc.stdout}\n{proc.stderr}"
        if target:
            (tmp_path / target).write_text(proc.stdout)
        ran.append((args[1], proc.stdout))
    assert [c for c, _ in ran] == ["keys", "jwks", "validate", "token", "token", "token",
                                   "check", "check", "check", "envoy-config"]
    assert json.loads((tmp_path / "jwks-again.json").read_text())["keys"][0]["kid"] == \
        json.loads((tmp_path / "jwks.json").read_text())["keys"][0]["kid"]
    inspect = json.loads(ran[5][1])
    assert inspect["accepted"] is True and inspect["principal"] == "https://issuer.example/bob"
    assert ran[6][1].startswith("ALLOW 200")
    assert ran[7][1].startswith("DENY 403") and "admins-for-admin" not in ran[7][1].split(
        "policy:")[0]
    assert ran[8][1].startswith("DENY 403") and "require-jwt" in ran[8][1]
