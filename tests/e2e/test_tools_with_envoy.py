"""Keys, JWKS and tokens from our tools are accepted by Envoy's own jwt_authn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from authz.testing.ports import free_port
from tests.e2e.conftest import StartEnvoy
from tests.e2e.jwt_rig import Rule, envoy_jwt_filter
from tests.e2e.rig import EchoUpstream

pytestmark = pytest.mark.e2e
ISSUER = "https://tools.example"


def authz(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "authz", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("key_type", ["rsa", "ec", "ed25519"])
async def test_minted_tokens_pass_envoy_jwt_authn(
    key_type: str, start_envoy: StartEnvoy, echo_upstream: EchoUpstream, tmp_path: Path
) -> None:
    authz("keys", "generate", "--type", key_type, "--private-key", "key.pem", "--jwks",
          "generated.json", cwd=tmp_path)
    jwks = json.loads(authz("jwks", "from-pem", "key.pem", cwd=tmp_path))
    assert jwks == json.loads((tmp_path / "generated.json").read_text())
    token = authz("token", "mint", "--key", "key.pem", "--iss", ISSUER, "--sub", "alice",
                  "--aud", "api", cwd=tmp_path)
    rule = Rule(ISSUER, audiences=["api"], claim_headers=[("x-sub", "sub")])
    envoy = await start_envoy(free_port(), echo_upstream.port, wait_healthy=False,
                              filters=[envoy_jwt_filter([rule], jwks)])
    ok = await envoy.send("GET", "/", {"authorization": f"Bearer {token}"})
    assert ok.status == 200, ok.body
    assert ok.upstream is not None and ok.upstream["headers"]["x-sub"] == "alice"
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[::-1]}"
    bad = await envoy.send("GET", "/", {"authorization": f"Bearer {forged}"})
    assert bad.status == 401
