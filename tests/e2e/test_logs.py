"""Every decision gets a log line; no token, cookie or signature ever appears."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.rig import EchoUpstream
from tests.policies import deny_path

pytestmark = pytest.mark.e2e

SECRET_TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.eyJzdWIiOiJtZSJ9.U0VDUkVUU0lHTkFUVVJF"
SECRET_COOKIE = "sess-0f9e8d7c6b5a4"
POLICY = deny_path("/admin")


async def test_decision_lines_have_fields_and_no_secrets(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    tmp_path: Path,
) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    authz = await start_authz(tmp_path / "p.yaml", args=[
        "--decision-log-header", "authorization", "--decision-log-header", "cookie",
        "--decision-log-header", "user-agent", "--log-level", "debug"])
    envoy = await start_envoy(authz.port, echo_upstream.port)
    headers = {"authorization": f"Bearer {SECRET_TOKEN}", "cookie": f"session={SECRET_COOKIE}",
               "x-request-id": "req-42", "user-agent": "tester/1"}
    assert (await envoy.send("GET", f"/ok?access_token={SECRET_TOKEN}", headers)).status == 200
    assert (await envoy.send("GET", "/admin", headers)).status == 403
    authz.process.stop()
    output = authz.process.output()
    for secret in (SECRET_TOKEN, SECRET_COOKIE, "U0VDUkVUU0lHTkFUVVJF"):
        assert secret not in output
    decisions = [e for e in authz.log_lines() if e.get("event") == "decision"]
    assert [(d["request_id"], d["decision"], d["status"]) for d in decisions] == [
        ("req-42", "allow", 200), ("req-42", "deny", 403)]
    deny = decisions[1]
    for key in ("method", "host", "path", "scope", "reason", "policy", "source_ip",
                "latency_ms"):
        assert key in deny, key
    assert deny["policy"] == "ns[default]-policy[deny-admin]-rule[0]"
    assert decisions[0]["path"] == "/ok"
    assert deny["headers"] == {"authorization": "[redacted]", "cookie": "[redacted]",
                               "user-agent": "tester/1"}
