"""``authz check --explain`` and the ``--enable-debug-endpoints`` switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz.cli import build_parser, main, settings_from_args

POLICIES = Path(__file__).resolve().parents[2] / "examples" / "policies"


def test_check_explain_text(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--policy", str(POLICIES), "--url", "http://api.local/public",
                 "--namespace", "shop", "--explain"])
    out = capsys.readouterr().out
    assert code == 0
    assert "DENY istio-system/block-admin" in out
    assert ('no match: to[0].operation.paths: ["/admin", "/admin/*"] did not match "/public"'
            in out)
    assert out.rstrip().endswith(
        "decision: ALLOW 200: no DENY rule matched and no ALLOW policy applies")


def test_check_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--policy", str(POLICIES), "--url", "http://api.local/admin",
                 "--explain", "--output", "json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1
    explanation = result["explanation"]
    assert explanation["decision"]["policy"] == result["policy"]
    (rule,) = [r for p in explanation["authorization"]["policies"] for r in p["rules"]
               if r["matched"]]
    assert rule["rule"] == "ns[istio-system]-policy[block-admin]-rule[0]"
    assert rule["location"].endswith("authorization.yaml:12")


@pytest.mark.parametrize(("env", "argv", "expected"), [
    (None, [], False), (None, ["--enable-debug-endpoints"], True), ("true", [], True),
    ("0", [], False), ("false", ["--enable-debug-endpoints"], True),
])
def test_debug_endpoints_switch_and_its_env_twin(
        monkeypatch: pytest.MonkeyPatch, env: str | None, argv: list[str],
        expected: bool) -> None:
    if env is None:
        monkeypatch.delenv("AUTHZ_ENABLE_DEBUG_ENDPOINTS", raising=False)
    else:
        monkeypatch.setenv("AUTHZ_ENABLE_DEBUG_ENDPOINTS", env)
    args = build_parser().parse_args(["serve", *argv])
    assert settings_from_args(args).enable_debug_endpoints is expected


def test_a_bad_debug_endpoints_variable_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AUTHZ_ENABLE_DEBUG_ENDPOINTS", "maybe")
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == (
        "authz: error: AUTHZ_ENABLE_DEBUG_ENDPOINTS='maybe': expected true or false")
