"""`authz check` answers what the server would answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from authz.tools.check import CheckError, build_request, read_token
from tests.policies import require_jwt

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/web/sa/frontend"], remoteIpBlocks: ["10.0.0.0/8"]}
    to:
    - operation: {methods: ["GET"], paths: ["/orders/*"]}
    when:
    - key: request.headers[x-tenant]
      values: ["acme"]
"""


def check(policy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authz", "check", "--policy", str(policy), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    return f


MATCHING = ["--url", "http://api.shop/orders/7?x=1", "--namespace", "shop", "--labels", "app=api",
            "--source-principal", "spiffe://cluster.local/ns/web/sa/frontend",
            "--source-ip", "10.1.2.3", "--header", "X-Tenant: acme"]


def test_allow_exits_zero_and_names_the_rule(policy: Path) -> None:
    proc = check(policy, *MATCHING, "--output", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["decision"] == "allow" and out["status"] == 200
    assert out["policy"] == "ns[shop]-policy[api]-rule[0]"
    assert out["scope"] == "shop[app=api]"


@pytest.mark.parametrize(
    ("change", "value"),
    [("--method", "POST"), ("--header", "X-Tenant: other"), ("--source-ip", "192.168.0.1"),
     ("--source-principal", "spiffe://cluster.local/ns/web/sa/other"),
     ("--url", "http://api.shop/admin")],
)
def test_each_condition_can_deny(policy: Path, change: str, value: str) -> None:
    args = list(MATCHING)
    if change in ("--header",):
        i = args.index("--header")
        args[i + 1] = value
    else:
        i = args.index(change) if change in args else None
        if i is None:
            args += [change, value]
        else:
            args[i + 1] = value
    proc = check(policy, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("DENY 403 (rbac_denied)")
    assert "RBAC: access denied" in proc.stdout


def test_other_workload_has_no_policy(policy: Path) -> None:
    proc = check(policy, "--url", "http://x/", "--namespace", "shop", "--labels", "app=web")
    assert proc.returncode == 0 and "no_policy" in proc.stdout


def test_bad_policy_and_bad_input_exit_two(policy: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("GET", "GET\"]}\n    bogus: [1"))
    proc = check(bad, "--url", "http://x/")
    assert proc.returncode == 2 and f"{bad}:" in proc.stderr
    proc = check(policy, "--url", "/relative")
    assert proc.returncode == 2 and "--url must be absolute" in proc.stderr


@pytest.mark.parametrize("address", ["999.1.1.1", "10.0.0", "example.com", ""])
def test_a_source_ip_that_is_no_address_exits_two_with_one_line(
    policy: Path, address: str
) -> None:
    proc = check(policy, "--url", "http://api.local/orders", "--source-ip", address)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"authz: error: --source-ip must be an IPv4 or IPv6 address (got {address!r})"]


def test_build_request_shapes_like_envoy() -> None:
    req = build_request("https://h:8443/p?q=1", "post", ["A: 1", "a: 2"], token="t0k")
    http = req.attributes.request.http
    assert (http.method, http.scheme, http.host, http.path) == ("POST", "https", "h:8443", "/p?q=1")
    assert http.headers["a"] == "1,2"
    assert http.headers["authorization"] == "Bearer t0k"
    assert req.attributes.destination.address.socket_address.port_value == 8443
    with pytest.raises(CheckError):
        build_request("http://h/", headers=["no colon"])


def test_read_token_forms(tmp_path: Path) -> None:
    f = tmp_path / "t"
    f.write_text("Bearer abc\n")
    assert read_token(f"@{f}") == "abc"
    assert read_token(" xyz ") == "xyz"
    assert read_token(None) is None


RA = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ra, namespace: default}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwksUri: https://idp.invalid/jwks.json
---
""" + require_jwt(name="need-jwt")


def authz(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authz", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@pytest.fixture
def minted(tmp_path: Path) -> str:
    assert authz("keys", "generate", "--type", "ec", "--private-key", "k.pem", "--jwks",
                 "jwks.json", cwd=tmp_path).returncode == 0
    (tmp_path / "ra.yaml").write_text(RA)
    proc = authz("token", "mint", "--key", "k.pem", "--iss", "https://idp.example", "--sub",
                 "alice", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_check_with_token_and_jwks_file(tmp_path: Path, minted: str) -> None:
    base = ["check", "--policy", "ra.yaml", "--jwks", "jwks.json", "--url", "http://api/x",
            "--output", "json"]
    ok = authz(*base, "--token", minted, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["upstream_headers_removed"] == ["authorization"]
    none = authz(*base, cwd=tmp_path)
    assert none.returncode == 1 and json.loads(none.stdout)["status"] == 403
    bad = authz(*base, "--token", minted[:-4] + "AAAA", cwd=tmp_path)
    out = json.loads(bad.stdout)
    assert (bad.returncode, out["status"], out["body"]) == (1, 401, "Jwt verification fails")
    assert out["response_headers"]["www-authenticate"].endswith('error="invalid_token"')


def test_token_inspect_with_policy_says_why(tmp_path: Path, minted: str) -> None:
    good = authz("token", "inspect", minted, "--policy", "ra.yaml", "--jwks", "jwks.json",
                 cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["principal"] == "https://idp.example/alice"
    other = authz("token", "inspect", minted, "--policy", "ra.yaml", "--jwks", "jwks.json",
                  "--namespace", "elsewhere", cwd=tmp_path)
    assert other.returncode == 1
    assert "no RequestAuthentication applies" in json.loads(other.stdout)["why"]
    tampered = authz("token", "inspect", minted[:-4] + "AAAA", "--policy", "ra.yaml",
                     "--jwks", "jwks.json", cwd=tmp_path)
    verdict = json.loads(tampered.stdout)
    assert tampered.returncode == 1
    assert (verdict["accepted"], verdict["status"], verdict["why"]) == (
        False, 401, "Jwt verification fails")
