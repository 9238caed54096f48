"""``authz test``: test files, minted tokens, reports, coverage, JUnit and --init."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from authz.cli import main
from authz.explain.coverage import Coverage
from authz.tools.testsuite import load_test_file, run_file
from tests.tools.xsd_subset import Schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TUTORIAL = EXAMPLES / "tutorial"
SCHEMA = Path(__file__).with_name("junit-10.xsd")

POLICIES = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks.json
    audiences: [shop]
    fromHeaders: [{name: x-jwt}]
    fromParams: [token]
    fromCookies: [session]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  rules:
  - from:
    - source: {requestPrincipals: ["https://issuer.example/*"]}
    to:
    - operation: {methods: [GET], paths: ["/orders*"]}
  - from:
    - source: {principals: ["cluster.local/ns/batch/sa/worker"]}
    when:
    - key: request.headers[x-team]
      values: [blue]
"""


def copy_tutorial(tmp_path: Path) -> Path:
    target = tmp_path / "tutorial"
    shutil.copytree(TUTORIAL, target)
    return target


def write_suite(tmp_path: Path, cases: str, head: str = "jwks: {generate: true}\n") -> Path:
    (tmp_path / "policies.yaml").write_text(POLICIES)
    path = tmp_path / "shop.authz-test.yaml"
    path.write_text(f"policies: policies.yaml\n{head}cases:\n{cases}")
    return path


def test_the_examples_pass_with_full_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(EXAMPLES), "--coverage", "--min-coverage", "100"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "6 passed, 0 failed"
    assert "coverage: 100.0% of rule outcomes (8/8;" in out
    assert "NOT REACHED" not in out and "half covered" not in out


def test_a_broken_case_names_its_file_line_the_deciding_rule_and_the_diff(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = copy_tutorial(tmp_path)
    test_file = suite / "tutorial.authz-test.yaml"
    text = test_file.read_text()
    broken = text.replace(
        'expect: {status: 403, policy: demo/require-jwt, rule: 0, body: "RBAC: access denied"}',
        "expect: {status: 200, policy: demo/admins-only-admin, rule: 0}")
    assert broken != text
    test_file.write_text(broken)
    line = broken.splitlines().index("- name: no token is denied by the require-jwt policy") + 1
    policy_file = suite / "policies" / "demo.yaml"
    rule_line = policy_file.read_text().splitlines().index(
        "    - source: {notRequestPrincipals: [\"*\"]}") + 0  # the rule's "- from:" line
    assert main(["test", str(suite)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"FAIL {test_file}:{line}: no token is denied by the require-jwt policy: decided by "
        f"{policy_file}:{rule_line}: ns[demo]-policy[require-jwt]-rule[0]",
        "  status: expected 200, got 403 (rbac_denied: RBAC: access denied)",
        "  deciding rule: expected demo/admins-only-admin rule 0, got demo/require-jwt rule 0",
        "5 passed, 1 failed",
    ]


def test_explain_on_a_failing_case_shows_every_rule_in_scope(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = copy_tutorial(tmp_path)
    test_file = suite / "tutorial.authz-test.yaml"
    test_file.write_text(test_file.read_text().replace(
        "expect: {status: 403, body: \"RBAC: access denied\"}", "expect: {status: 200}"))
    assert main(["test", str(suite), "--explain"]) == 1
    out = capsys.readouterr().out
    assert "token at header authorization (prefix 'Bearer '): OK (https://demo.authz.local/bob)" \
        in out
    assert "MATCHED: to[0].operation.notPaths" not in out
    assert ('rule[0] (' in out and 'no match: to[0].operation.notPaths: ["/admin", "/admin/*"] '
            'matched "/admin" (so it fails)') in out
    assert ('no match: when[0] request.auth.claims[groups] values: "admins" did not match '
            '["users"]') in out
    assert "decision: DENY 403: ALLOW policies apply to this scope and none of their rules " \
        "matched" in out


def test_coverage_drops_when_a_case_is_removed(tmp_path: Path) -> None:
    suite = copy_tutorial(tmp_path)
    test_file = suite / "tutorial.authz-test.yaml"
    full = Coverage()
    run_file(load_test_file(test_file), full)
    assert full.percent == 100.0
    text = test_file.read_text()
    start = text.index("- name: /admin with a token in the admins group")
    test_file.write_text(text[:start])
    fewer = Coverage()
    run_file(load_test_file(test_file), fewer)
    assert fewer.percent < 100.0
    item = fewer.items[("rule", "ns[demo]-policy[admins-only-admin]-rule[1]")]
    assert (item.positive, item.negative) == (0, 1)
    assert main(["test", str(suite), "--min-coverage", "100"]) == 1


def test_junit_output_validates_against_the_junit_schema(tmp_path: Path) -> None:
    suite = copy_tutorial(tmp_path)
    test_file = suite / "tutorial.authz-test.yaml"
    test_file.write_text(test_file.read_text().replace("status: 401, body: Jwt is expired",
                                                       "status: 200"))
    report = tmp_path / "junit.xml"
    assert main(["test", str(suite), "--junit", str(report)]) == 1
    root = ET.parse(report).getroot()
    schema = Schema.load(SCHEMA)
    assert schema.validate(root) == []
    suite_el = root.find("testsuite")
    assert suite_el is not None and suite_el.get("tests") == "6"
    assert suite_el.get("failures") == "1"
    failures = root.findall(".//failure")
    assert len(failures) == 1
    assert "status: expected 200, got 401" in (failures[0].get("message") or "")
    # The checker does reject what the schema forbids.
    root.append(ET.Element("testcase"))
    assert schema.validate(root) != []


def test_minted_tokens_in_every_place_and_spoiled_on_purpose(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    iss = "https://issuer.example"
    suite = write_suite(tmp_path, f"""\
- name: header, RSA key
  request: {{path: /orders/1, namespace: shop}}
  token: {{issuer: {iss}, aud: shop, alg: RS256, in: header, name: x-jwt}}
  expect: {{status: 200, policy: shop/api, rule: 0, headers_absent: [x-jwt]}}
- name: query parameter
  request: {{path: /orders/1, namespace: shop}}
  token: {{issuer: {iss}, aud: [shop], in: query, name: token}}
  expect: {{status: 200, policy: shop/api, rule: 0}}
- name: cookie
  request: {{path: /orders/1, namespace: shop}}
  token: {{issuer: {iss}, aud: shop, in: cookie, name: session}}
  expect: {{status: 200}}
- name: wrong audience
  request: {{path: /orders/1, namespace: shop}}
  token: {{issuer: {iss}, aud: other, in: header, name: x-jwt}}
  expect: {{status: 403, body: Audiences in Jwt are not allowed}}
- name: signed by a stranger
  request: {{path: /orders/1, namespace: shop}}
  token: {{issuer: {iss}, aud: shop, wrong_key: true, in: header, name: x-jwt}}
  expect: {{status: 401, body: Jwt verification fails}}
- name: not yet valid
  request: {{path: /orders/1, namespace: shop}}
  token: {{issuer: {iss}, aud: shop, nbf: 1h, in: header, name: x-jwt}}
  expect: {{status: 401, body: Jwt not yet valid}}
- name: a literal token
  request: {{path: /orders/1, namespace: shop}}
  token: {{value: abc.def, in: header, name: x-jwt}}
  expect: {{status: 401}}
- name: mesh peer with the right header
  request:
    path: /batch
    namespace: shop
    headers: {{x-team: blue}}
    source: {{principal: spiffe://cluster.local/ns/batch/sa/worker}}
  expect: {{status: 200, policy: shop/api, rule: 1, headers: {{x-team: blue}}}}
- name: mesh peer without it
  request:
    path: /batch
    namespace: shop
    source: {{principal: spiffe://cluster.local/ns/batch/sa/worker}}
  expect: {{status: 403}}
""")
    assert main(["test", str(suite), "--output", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["passed"], report["failed"]) == (9, 0)


@pytest.mark.parametrize(("body", "line", "message"), [
    ("- name: x\n  expect: {status: 302}\n", 6, "expect.status must be 200, 401 or 403"),
    ("- name: x\n  request: {path: /}\n  expect: {status: 200}\n  extra: 1\n", 8,
     "case: unknown field 'extra'"),
    ("- name: x\n  token: {sub: a}\n  expect: {status: 200}\n", 6,
     "token.issuer is required"),
    ("- name: x\n  request: {url: /relative}\n  expect: {status: 200}\n", 6,
     "request: url must be absolute"),
])
def test_an_invalid_test_file_exits_2_with_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, line: int,
        message: str) -> None:
    suite = write_suite(tmp_path, body, head="jwks: {generate: true}\nnow: 1700000000\n")
    assert main(["test", str(suite)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"authz test: {suite}:{line}: "), err
    assert message in err


def test_a_bad_policy_exits_2_with_its_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path, "- name: x\n  expect: {status: 200}\n")
    (tmp_path / "policies.yaml").write_text(POLICIES.replace("methods: [GET]", "methods: GET"))
    assert main(["test", str(suite)]) == 2
    assert f"{tmp_path / 'policies.yaml'}:" in capsys.readouterr().err


def test_the_clock_is_the_files_not_todays(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # A token minted for 2001 with a 1h life verifies at the file's 2001 clock.
    suite = write_suite(tmp_path, """\
- name: an old clock
  request: {path: /orders, namespace: shop}
  token: {issuer: https://issuer.example, aud: shop, in: header, name: x-jwt, exp: 1h}
  expect: {status: 200}
""", head="jwks: {generate: true}\nnow: 2001-09-09T01:46:40Z\n")
    assert load_test_file(suite).now == 1_000_000_000
    assert main(["test", str(suite)]) == 0


@pytest.mark.parametrize("policies", [EXAMPLES / "policies", TUTORIAL / "policies"])
def test_init_writes_a_starter_that_passes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], policies: Path) -> None:
    target = tmp_path / "starter.authz-test.yaml"
    assert main(["test", "--init", "--policy", str(policies), str(target)]) == 0
    text = target.read_text()
    assert text.startswith("# Starter tests written by 'authz test --init'.")
    capsys.readouterr()
    assert main(["test", str(target)]) == 0
    out = capsys.readouterr().out.splitlines()[-1]
    passed = int(out.split()[0])
    assert passed >= 2 and out.endswith(" passed, 0 failed")
    if policies == TUTORIAL / "policies":  # a match and a miss per rule, a bad token per issuer
        assert main(["test", str(target), "--min-coverage", "100"]) == 0
    assert main(["test", "--init", "--policy", str(policies), str(target)]) == 2  # not overwritten


def test_a_missing_path_is_a_usage_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == (
        f"authz test: {tmp_path / 'nope'}: no such file or directory\n")


def test_malformed_yaml_names_its_file_and_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path, "- name: x\n  request: {path: [/a\n  expect: {}\n")
    assert main(["test", str(suite)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"authz test: {suite}:6: invalid YAML: "), line


def test_no_test_files_is_a_usage_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(tmp_path)]) == 2
    assert "no *.authz-test.yaml files" in capsys.readouterr().err
