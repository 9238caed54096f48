"""A handful of the attack corpus through real Envoy, beside Envoy's own jwt_authn;
and the token redaction of the decision log, read from the server's own output."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from authz.testing.ports import free_port
from tests.attacks.corpus import ISS_A, Keys, attacks, controls, good_claims, jwks_a, signed
from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.jwt_rig import JwksServer, Rule, envoy_jwt_filter, request_authentication
from tests.e2e.rig import EchoUpstream, Reply

pytestmark = pytest.mark.e2e

KEYS = Keys.generate()
ATTACKS = attacks(KEYS)
RULES = [Rule(ISS_A, claim_headers=[("x-name", "name")])]
SAME_AS_ENVOY = [
    "deep-nesting-header", "deep-nesting-objects", "alg-none-with-signature",
    "alg-none-empty-signature", "hs256-with-public-key-pem", "es256-zero-signature",
    "kid-path-traversal", "jwk-header-embedded-key", "jku-header", "jwe-5-parts", "4-parts",
    "empty-signature", "cross-issuer-b-key-a-claim", "duplicate-iss-last-right",
    "duplicate-alg", "oversized-garbage",
]
"""Envoy's answer, exactly: 401 with its body (or its own 431 for a header too large
to reach any filter, which is then our answer too)."""
STRICTER_THAN_ENVOY = ["crit-unknown", "crit-b64-false", "claim-header-crlf",
                       "claim-header-nul"]


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer(jwks_a(KEYS))
    await server.start()
    yield server
    await server.stop()


def seen(reply: Reply) -> tuple[int, str]:
    return reply.status, reply.body if reply.upstream is None else "(upstream)"


async def test_attacks_through_envoy_beside_jwt_authn(
    jwks_server: JwksServer, start_authz: StartAuthz, start_envoy: StartEnvoy,
    echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    (tmp_path / "ra.json").write_text(request_authentication(RULES, jwks_server.uri))
    authz = await start_authz(tmp_path / "ra.json")
    ours = await start_envoy(authz.port, echo_upstream.port)
    reference = await start_envoy(free_port(), echo_upstream.port, wait_healthy=False,
                                  filters=[envoy_jwt_filter(RULES, jwks_server.jwks)])
    good = controls(KEYS)["good-a"]
    assert (await ours.send("GET", "/r", good)).status == 200
    assert (await reference.send("GET", "/r", good)).status == 200
    differences, report = [], []
    for name in SAME_AS_ENVOY:
        expected = seen(await reference.send("GET", "/r", ATTACKS[name]))
        got = seen(await ours.send("GET", "/r", ATTACKS[name]))
        if got != expected or got[0] not in (401, 431):
            differences.append(f"{name}: envoy {expected}, authz {got}")
    for name in STRICTER_THAN_ENVOY:
        envoy_answer = seen(await reference.send("GET", "/r", ATTACKS[name]))
        got = seen(await ours.send("GET", "/r", ATTACKS[name]))
        report.append(f"{name}: envoy {envoy_answer}, authz {got}")
        if got[0] != 401:
            differences.append(f"{name}: authz {got}")
    assert not differences, "\n".join(differences + report)
    # Documented in docs/jwt-semantics.md: Envoy takes these, or fails them with a 5xx.
    crit = seen(await reference.send("GET", "/r", ATTACKS["crit-unknown"]))
    assert crit == (200, "(upstream)"), crit
    crlf = seen(await reference.send("GET", "/r", ATTACKS["claim-header-crlf"]))
    assert crlf == (503, "invalid header value for: x-name"), crlf
    assert authz.process.alive()
    assert "Traceback" not in authz.process.output()


async def test_no_token_segment_reaches_the_log_at_debug(
    jwks_server: JwksServer, start_authz: StartAuthz, start_envoy: StartEnvoy,
    echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    """``--decision-log-header`` naming the headers that carry tokens, at debug:
    bad-signature, expired, good and malformed tokens never appear, whole or in part."""
    rules = [Rule(ISS_A, from_headers=[("x-token", "Token ")], forward=True)]
    (tmp_path / "ra.json").write_text(request_authentication(rules, jwks_server.uri))
    authz = await start_authz(tmp_path / "ra.json", args=[
        "--log-level", "debug", "--decision-log-header", "x-token",
        "--decision-log-header", "authorization", "--decision-log-header", "x-copy"])
    envoy = await start_envoy(authz.port, echo_upstream.port)
    tokens = {
        "bad-signature": signed(good_claims(), KEYS.attacker),
        "expired": signed(good_claims(exp=1_000), KEYS.a),
        "good": signed(good_claims(), KEYS.a),
        "deep": ATTACKS["deep-nesting-claims"]["authorization"].removeprefix("Bearer "),
    }
    answers = {}
    for name, token in tokens.items():
        headers = {"x-token": f"Token {token}", "x-copy": f"copy={token}"}
        answers[name] = (await envoy.send("GET", "/r", headers)).status
    assert answers == {"bad-signature": 401, "expired": 401, "good": 200, "deep": 401}
    authz.process.stop()
    output = authz.process.output()
    for name, token in tokens.items():
        for part in [token, *token.split(".")]:
            assert part not in output, f"{name}: {part[:20]}... in the log"
    lines = [json.loads(line) for line in output.splitlines()
             if line.startswith("{") and '"decision"' in line]
    shown = [line["headers"] for line in lines if "headers" in line]
    assert len(shown) == len(tokens)
    assert all(h["x-token"].startswith("[sha256:") and "[sha256:" in h["x-copy"]
               for h in shown), shown
