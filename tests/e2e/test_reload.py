"""Editing policies under a steady stream of requests through Envoy."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.rig import EchoUpstream, Envoy
from tests.policies import deny_path

pytestmark = pytest.mark.e2e

POLICY = deny_path("%s", name="gate")


async def stream(envoy: Envoy, stop: asyncio.Event, log: list[tuple[float, str, int]]) -> None:
    while not stop.is_set():
        for path in ("/a", "/b"):
            reply = await envoy.send("GET", path)
            log.append((time.monotonic(), path, reply.status))


def status_at(
    log: list[tuple[float, str, int]], path: str, after: float, before: float = float("inf")
) -> set[int]:
    return {s for t, p, s in log if p == path and after <= t < before}


async def test_edits_take_effect_within_2s_without_failed_requests(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    tmp_path: Path,
) -> None:
    policy = tmp_path / "gate.yaml"
    policy.write_text(POLICY % "/a")
    authz = await start_authz(policy)
    envoy = await start_envoy(authz.port, echo_upstream.port)
    stop, log = asyncio.Event(), []
    runner = asyncio.create_task(stream(envoy, stop, log))
    try:
        await asyncio.sleep(0.5)
        edited = time.monotonic()
        policy.write_text(POLICY % "/b")
        await asyncio.sleep(2.5)
        broken = time.monotonic()
        policy.write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                          "metadata: {name: gate, namespace: default}\nspec: {action: NOPE}\n")
        await asyncio.sleep(1.5)
        fixed = time.monotonic()
        policy.write_text(POLICY % "/a")
        await asyncio.sleep(2.5)
    finally:
        stop.set()
        await runner
    assert {s for _, _, s in log} <= {200, 403}, "a request failed for another reason"
    # before the edit: /a denied, /b allowed
    assert {s for t, p, s in log if p == "/a" and t < edited} == {403}
    # within 2 s of the edit the decisions flipped and stayed flipped
    assert status_at(log, "/a", edited + 2.0, broken) == {200}
    assert status_at(log, "/b", edited + 2.0, broken) == {403}
    # the broken file changed nothing
    window = [(p, s) for t, p, s in log if broken <= t < fixed]
    assert window and all((p, s) in {("/a", 200), ("/b", 403)} for p, s in window)
    # fixing it recovers
    assert status_at(log, "/a", fixed + 2.0) == {403}
    errors = [e for e in authz.log_lines() if e.get("event") == "policy_reload_failed"]
    assert errors and any("spec.action" in err for err in errors[0]["errors"])


async def test_sighup_reloads_when_watching_is_off(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    tmp_path: Path,
) -> None:
    policy = tmp_path / "gate.yaml"
    policy.write_text(POLICY % "/a")
    authz = await start_authz(policy, args=["--watch-interval", "0"])
    envoy = await start_envoy(authz.port, echo_upstream.port)
    policy.write_text(POLICY % "/b")
    await asyncio.sleep(1.0)
    assert (await envoy.send("GET", "/b")).status == 200  # not watching: unchanged
    authz.process.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while (await envoy.send("GET", "/b")).status != 403:
        assert time.monotonic() < deadline, authz.process.output()
        await asyncio.sleep(0.1)
    assert (await envoy.send("GET", "/a")).status == 200
