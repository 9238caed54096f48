"""`authz validate` as a CI step would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_data import require_shared

GOOD = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ok, namespace: shop}
spec:
  rules:
  - to:
    - operation: {methods: [GET]}
"""


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authz", "validate", *args],
                          capture_output=True, text=True, timeout=60)


def test_valid_file_exits_zero(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text(GOOD)
    proc = validate(str(f))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: 1 AuthorizationPolicy" in proc.stderr


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (GOOD.replace("methods: [GET]", "methods: [GET], bogus: [x]"), 7, "bogus"),
        (GOOD.replace("rules:", "action: SOMETIMES\n  rules:"), 5, "spec.action"),
        (GOOD + "  - from:\n    - source: {ipBlocks: ['10.0.0.0/33']}\n", 9, "ipBlocks"),
        (GOOD.replace("to:", "when:\n    - key: request.nope\n      values: [a]\n    to:"), 7,
         "request.nope"),
    ],
    ids=["unknown-field", "bad-action", "bad-cidr", "bad-when-key"],
)
def test_errors_name_file_line_resource_field(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    proc = validate(str(f))
    assert proc.returncode == 1
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"{f}:{line}: AuthorizationPolicy shop/ok: "), first
    assert message in first


def test_strict_fails_on_warnings(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text(GOOD.replace("  rules:\n  - to:\n    - operation: {methods: [GET]}\n", "  {}\n"))
    assert validate(str(f)).returncode == 0
    strict = validate("--strict", str(f))
    assert strict.returncode == 1 and "warning" in strict.stdout


def test_every_istio_builder_input_is_accepted() -> None:
    inputs = sorted(require_shared("conformance/istio-authz-builder").glob("*/*-in.yaml"))
    assert inputs
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from authz.tools.validate import run\n"
         "sys.exit(max(run([p], 'istio-system', 'default', False) for p in sys.argv[1:]))",
         *map(str, inputs)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout
