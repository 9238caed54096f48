"""``authz test`` decides what ``authz serve`` behind real Envoy decides.

The tutorial's suite (plus a token in the query and one signed by a stranger) is
run by ``authz test``'s runner with ``jwks: generate``; the same requests, with the
same minted tokens, then go through Envoy to a server whose jwksUri serves the
suite's generated keys. Status, deny body and what reached the upstream must agree.
The admin port's ``/debug/explain`` is checked on the same kind of server.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from authz.tools.testsuite import load_test_file, run_file
from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.jwt_rig import JwksServer
from tests.e2e.rig import EchoUpstream, Route

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "examples" / "tutorial"
ISSUER = "https://demo.authz.local"
EXTRA_CASES = f"""
- name: a good token in the query parameter
  request: {{path: "/headers?x=1", namespace: demo}}
  token: {{issuer: {ISSUER}, sub: carol, in: query}}
  expect: {{status: 200, headers: {{x-user: carol}}}}

- name: a token signed by a stranger
  request: {{path: /headers, namespace: demo}}
  token: {{issuer: {ISSUER}, sub: mallory, wrong_key: true}}
  expect: {{status: 401, body: Jwt verification fails}}
"""


async def test_authz_test_decisions_equal_serve_behind_envoy(
    tmp_path: Path, start_authz: StartAuthz, start_envoy: StartEnvoy,
    echo_upstream: EchoUpstream,
) -> None:
    shutil.copytree(TUTORIAL, tmp_path / "suite")
    test_file = tmp_path / "suite" / "tutorial.authz-test.yaml"
    # The live server reads the real clock: the suite's clock is set to now, so the
    # tokens it mints (and the expired one) mean the same to both.
    text = test_file.read_text().replace("now: 2030-01-01T00:00:00Z",
                                         f"now: {int(time.time())}")
    test_file.write_text(text + EXTRA_CASES)
    result = run_file(load_test_file(test_file))
    assert [r.problems for r in result.results if not r.passed] == []
    assert len(result.results) == 8 and result.signers is not None

    jwks = JwksServer(result.signers.jwks()[ISSUER])
    await jwks.start()
    try:
        policies = tmp_path / "serve-policies.yaml"
        policies.write_text((tmp_path / "suite" / "policies" / "demo.yaml").read_text().replace(
            "https://demo.authz.local/jwks.json", jwks.uri))
        authz = await start_authz(policies)
        envoy = await start_envoy(authz.port, echo_upstream.port,
                                  (Route("/", {"namespace": "demo"}),))
        for case in result.results:
            url = urlsplit(case.request.url)
            path = url.path + (f"?{url.query}" if url.query else "")
            reply = await envoy.send(case.request.method, path, list(case.request.headers))
            offline = case.decision
            what = f"{case.case.name}: envoy {reply.status} {reply.body[:80]!r}"
            assert reply.status == offline.status, what
            if offline.allowed:
                assert reply.upstream is not None, what
                seen = reply.upstream["headers"]
                for header in offline.upstream_headers:
                    assert seen.get(header.name) == header.value, what
                for name in offline.upstream_headers_to_remove:
                    assert name not in seen, what
                for param in offline.query_parameters_to_remove:
                    assert f"{param}=" not in reply.upstream["path"], what
            else:
                assert reply.body == offline.body, what
                assert reply.upstream is None, what
    finally:
        await jwks.stop()


async def test_debug_explain_is_served_only_when_enabled(
    tmp_path: Path, start_authz: StartAuthz,
) -> None:
    policies = ROOT / "examples" / "policies"
    request = {"url": "http://api.local/api/orders", "namespace": "default"}
    off = await start_authz(policies)
    on = await start_authz(policies, args=["--enable-debug-endpoints"])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{off.admin_port}/debug/explain",
                          json=request) as r:
            assert r.status in (404, 405)
        async with s.post(f"http://127.0.0.1:{on.admin_port}/debug/explain",
                          json=request) as r:
            assert r.status == 200
            body = await r.json()
        async with s.post(f"http://127.0.0.1:{on.admin_port}/debug/explain",
                          data=b'{"url": "/relative"}') as r:
            assert r.status == 400
            assert "url must be absolute" in (await r.json())["error"]
    assert body["decision"]["status"] == 403
    assert body["decision"]["policy"] == "ns[default]-policy[require-jwt-for-api]-rule[0]"
    rule = body["authorization"]["policies"][0]["rules"][0]
    assert rule["matched"] and rule["decided_by"] == (
        'to[0].operation.paths: "/api/*" matched "/api/orders"')
    assert json.dumps(body).count("snapshot_version") == 1


async def test_debug_explain_under_workers_is_answered_by_a_worker(
    start_authz: StartAuthz,
) -> None:
    supervisor = await start_authz(ROOT / "examples" / "policies",
                                   args=["--workers", "2", "--enable-debug-endpoints"])
    async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{supervisor.admin_port}/debug/explain",
            json={"url": "http://api.local/admin"}) as r:
        assert r.status == 200
        body = await r.json()
    assert body["decision"]["policy"] == "ns[istio-system]-policy[block-admin]-rule[0]"
