"""JWKS outages, hangs, garbage, empty sets and key rotation under load: tokens keep
being judged by the last good key set, and tokens signed with a rotated key are
accepted from the first one (their Checks wait for the refetch the new kid starts)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.jwt_rig import JwksServer, SigningKey, jwks_of, rsa_key
from tests.e2e.rig import EchoUpstream
from tests.faults.conftest import LONG, Row
from tests.faults.load import Answer, Load

pytestmark = pytest.mark.e2e

ISSUER = "https://faults.example"
HOLD = 12.0 if LONG else 2.5
"""Seconds each fault lasts (the key set is refreshed every second meanwhile)."""
EXPECTED = {"good": 200, "none": 403, "bad-signature": 401}


class FaultyJwks(JwksServer):
    """A JWKS endpoint that can be down, slow, or answer garbage or an empty set."""

    def __init__(self, jwks: dict[str, object]) -> None:
        super().__init__(jwks)
        self.mode = "ok"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.mode == "down":
            return web.Response(status=503, text="unavailable")
        if self.mode == "slow":
            await asyncio.sleep(30)  # longer than the rule's fetch timeout
        if self.mode == "garbage":
            return web.Response(text="<html>not a key set", content_type="application/json")
        if self.mode == "empty":
            return web.json_response({"keys": []})
        return web.json_response(self.jwks)


def policies(uri: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
         "metadata": {"name": "jwt", "namespace": "default"},
         "spec": {"jwtRules": [{"issuer": ISSUER, "jwksUri": uri, "timeout": "1s"}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "signed-in", "namespace": "default"},
         "spec": {"action": "ALLOW",
                  "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}},
    ]})


async def test_jwks_faults_under_load(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    tmp_path: Path, results: list[Row],
) -> None:
    k1, k2, stranger = rsa_key("k1"), rsa_key("k2"), rsa_key("k1")
    jwks = FaultyJwks(jwks_of(k1))
    await jwks.start()
    policy = tmp_path / "jwt.json"
    policy.write_text(policies(jwks.uri))
    # Refreshed every second, so each fault is seen at once; the refetch interval is
    # the default (2 s): a refresh just before the rotation holds no refetch back.
    authz = await start_authz(policy, args=["--jwks-refresh-interval", "1"])
    envoy = await start_envoy(authz.port, echo_upstream.port)
    signer: list[SigningKey] = [k1]
    bad = stranger.mint({"iss": ISSUER, "sub": "mallory"})
    tokens: dict[str, str] = {}

    def requests() -> list[tuple[str, dict[str, str], str]]:
        key = signer[0]
        if key.kid not in tokens:
            tokens[key.kid] = key.mint({"iss": ISSUER, "sub": "alice"})
        return [("/ok", {"authorization": f"Bearer {tokens[key.kid]}"}, f"good:{key.kid}"),
                ("/ok", {}, "none"),
                ("/ok", {"authorization": f"Bearer {bad}"}, "bad-signature")]

    def wrong(answers: list[Answer]) -> list[Answer]:
        return [a for a in answers if a.status != EXPECTED[a.tag.split(":")[0]]]

    try:
        async with Load(envoy.port, requests) as load:
            await asyncio.sleep(1.0)
            for mode in ("down", "slow", "garbage", "empty"):
                began = time.monotonic()
                jwks.mode = mode
                hits = jwks.hits
                await asyncio.sleep(HOLD)
                jwks.mode = "ok"
                during = load.between(began, time.monotonic())
                assert jwks.hits > hits, f"no refresh while {mode}"
                results.append(Row(f"JWKS {mode} for {HOLD:.1f} s", len(during),
                                   len(wrong(during)), None, "last good keys kept"))
                await asyncio.sleep(1.0)
            # Rotation: the JWKS publishes k2 beside k1 and tokens signed with k2 appear
            # at once (before any scheduled refresh): the unknown kid triggers a refetch,
            # and the k2 Checks wait for it rather than answer 401.
            jwks.jwks = jwks_of(k1, k2)
            rotated = time.monotonic()
            signer[0] = k2
            await asyncio.sleep(HOLD)
    finally:
        await jwks.stop()
    after = load.between(rotated)
    refused = [a for a in after if a.tag == "good:k2" and a.status != 200]
    accepted = min(a.end for a in after if a.tag == "good:k2" and a.status == 200)
    results.append(Row("JWKS rotation (new kid, tokens at once)", len(after),
                       len(refused), accepted - rotated,
                       "k2 Checks wait for the unknown-kid refetch"))
    before_rotation = load.between(0.0, rotated)
    assert not wrong(before_rotation), wrong(before_rotation)[:5]
    assert not [a for a in after if a.tag != "good:k2" and a.status != EXPECTED[a.tag]]
    assert not refused, refused[:5]
    assert accepted - rotated < 1.0
    late = [a for a in after if a.start > accepted]
    assert late and not wrong([Answer(a.start, a.end, a.path, a.status, a.tag.split(":")[0])
                               for a in late])
