"""A token signed with a key its issuer has just published (a new ``kid``): the Check
waits, bounded, for the JWKS fetch in flight and is decided again with the new keys;
with no fetch to wait for (rate limit, inline keys), a failed or slow fetch, or too
many waiters, the 401 is answered at once, as before."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import pytest
from aiohttp import web

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.authn.jwks import JwksManager, JwksSettings
from authz.config import ConfigError, Settings
from authz.http.protocol import HttpRequest, HttpResponse
from authz.observe import Metrics
from authz.pipeline.snapshot import SnapshotStore, compile_snapshot
from authz.policy.errors import PolicyError
from authz.policy.load import iter_paths
from authz.server import AuthorizationService
from tests.authn.helpers import Key, claims, jwks, rsa_key, serve_app

ISSUER = "https://rotating.example"
K1, K2 = rsa_key("k1"), rsa_key("k2", seed=1)


@dataclass
class Idp:
    """A JWKS endpoint: its key set, how slow it is, whether it fails, who asked."""

    keys: list[Key] = field(default_factory=lambda: [K1])
    delay: float = 0.0
    status: int = 200
    hits: int = 0
    uri: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        keys = list(self.keys)  # what was published when the request arrived
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        return web.Response(text=jwks(*(k.jwk() for k in keys)),
                            content_type="application/json")


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    state = Idp()
    app = web.Application()
    app.router.add_get("/keys", state.handle)
    runner, base = await serve_app(app)
    state.uri = f"{base}/keys"
    yield state
    await runner.cleanup()


@dataclass
class Rig:
    idp: Idp
    manager: JwksManager
    service: AuthorizationService

    def check(self, key: Key = K2) -> HttpResponse | Awaitable[HttpResponse]:
        token = key.sign(claims(iss=ISSUER, exp=int(time.time()) + 600))
        return self.service.check_http(HttpRequest(
            "GET", "/envoy/api", MappingProxyType({"authorization": f"Bearer {token}"}),
            "127.0.0.1", 40000))

    def publish_k2(self, delay: float = 0.0) -> None:
        """The provider rotates: k2 beside k1, served after ``delay`` seconds."""
        self.idp.keys, self.idp.delay = [K1, K2], delay


def policy(tmp_path: Path, uri: str, **rule: Any) -> Path:
    path = tmp_path / "ra.json"
    path.write_text(json.dumps({
        "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "ra", "namespace": "default"},
        "spec": {"jwtRules": [{"issuer": ISSUER, "jwksUri": uri, "timeout": "2s", **rule}]}}))
    return path


class MakeRig(Protocol):
    async def __call__(self, *, refetch_min_interval: float = 0.0, max_waiters: int = 1024,
                       wait: float = 0.5) -> Rig: ...


@pytest.fixture
async def make_rig(idp: Idp, tmp_path: Path) -> AsyncIterator[MakeRig]:
    """Builds a service whose one policy reads ``idp``'s keys; stops its JWKS manager
    after the test."""
    managers: list[JwksManager] = []

    async def make(*, refetch_min_interval: float = 0.0, max_waiters: int = 1024,
                   wait: float = 0.5) -> Rig:
        manager = JwksManager(JwksSettings(refresh_interval=3600,
                                           refetch_min_interval=refetch_min_interval,
                                           max_waiters=max_waiters))
        managers.append(manager)
        await manager.start()
        problems: list[PolicyError] = []
        snapshot = compile_snapshot(
            iter_paths([policy(tmp_path, idp.uri)], "default", problems), 1, keys=manager)
        assert not problems
        manager.set_rules(snapshot.jwt_rules)
        assert await manager.wait_ready(5)
        service = AuthorizationService(SnapshotStore(snapshot),
                                       Settings(jwks_refetch_wait=wait, decision_log="none"),
                                       Metrics())
        return Rig(idp, manager, service)

    yield make
    for manager in managers:
        await manager.stop()


def waits(rig: Rig) -> dict[str, int]:
    """The wait outcomes as /metrics exports them (authz_jwks_refetch_waits_total)."""
    metrics = Metrics()
    metrics.watch_jwks(rig.manager)
    return {outcome: int(metrics.registry.get_sample_value(
        "authz_jwks_refetch_waits_total", {"source": rig.idp.uri, "outcome": outcome}) or 0)
        for outcome in ("landed", "failed", "capped")}


async def answer(result: HttpResponse | Awaitable[HttpResponse]) -> HttpResponse:
    return result if isinstance(result, HttpResponse) else await result


async def test_new_kid_waits_for_the_fetch_in_flight_and_is_allowed(
        idp: Idp, make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.publish_k2(delay=0.2)
    began = time.perf_counter()
    first = rig.check()
    assert not isinstance(first, HttpResponse)  # deferred: a fetch is in flight
    others = [rig.check() for _ in range(20)]  # arrive while it runs: wait for the same one
    answers = [await answer(first), *await asyncio.gather(*(answer(o) for o in others))]
    assert [a.status for a in answers] == [200] * 21
    assert 0.15 < time.perf_counter() - began < 1.0
    assert idp.hits == 2  # the first fetch, then one refetch for all 21 requests
    assert rig.service.in_flight == 0
    assert waits(rig) == {"landed": 21, "failed": 0, "capped": 0}
    # The keys landed: the next request is answered at once.
    assert isinstance(rig.check(), HttpResponse)


async def test_grpc_check_waits_too(idp: Idp, make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.publish_k2(delay=0.1)
    request = external_auth_pb2.CheckRequest()
    token = K2.sign(claims(iss=ISSUER, exp=int(time.time()) + 600))
    request.attributes.request.http.headers["authorization"] = f"Bearer {token}"
    request.attributes.request.http.path = "/api"
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.host = "h"
    body = await rig.service.Check(request, None)  # type: ignore[arg-type]
    response = external_auth_pb2.CheckResponse.FromString(body)
    assert response.status.code == 0  # OK: allowed with the new key
    assert idp.hits == 2


async def test_no_fetch_to_wait_for_answers_at_once(
        idp: Idp, make_rig: MakeRig) -> None:
    # A kid the provider does not have: one refetch, waited for, still 401.
    rig = await make_rig(refetch_min_interval=60)
    assert (await answer(rig.check())).status == 401
    assert idp.hits == 2
    # The rate limit now holds the next refetch back: 401 at once, nothing fetched.
    rig.publish_k2()
    result = rig.check()
    assert isinstance(result, HttpResponse) and result.status == 401
    assert b"Jwks doesn't have key to match kid or alg from Jwt" in result.body
    await asyncio.sleep(0.1)
    assert idp.hits == 2
    # A known kid with a bad signature is no kid miss: 401 at once, no fetch either.
    forged = rsa_key("k1", seed=7)
    result = rig.check(forged)
    assert isinstance(result, HttpResponse) and result.status == 401


async def test_a_failed_fetch_answers_401_without_waiting_out_the_bound(
        idp: Idp, make_rig: MakeRig) -> None:
    rig = await make_rig(wait=2.0)
    idp.status, idp.delay = 503, 0.05
    began = time.perf_counter()
    result = await answer(rig.check())
    assert result.status == 401
    assert time.perf_counter() - began < 1.0  # the fetch failed: no reason to go on waiting


async def test_a_slow_fetch_is_waited_for_at_most_the_bound(
        idp: Idp, make_rig: MakeRig) -> None:
    rig = await make_rig(wait=0.2)
    rig.publish_k2(delay=1.5)
    began = time.perf_counter()
    result = rig.check()
    assert not isinstance(result, HttpResponse)
    assert (await result).status == 401
    assert 0.15 < time.perf_counter() - began < 0.6
    assert rig.service.in_flight == 0
    assert waits(rig) == {"landed": 0, "failed": 1, "capped": 0}


async def test_waiters_are_capped_per_source(
        idp: Idp, make_rig: MakeRig) -> None:
    # Anyone can mint unknown kids: past the cap a request is answered at once.
    rig = await make_rig(max_waiters=3)
    rig.publish_k2(delay=0.4)
    done: list[tuple[int, float]] = []
    began = time.perf_counter()

    async def one() -> None:
        status = (await answer(rig.check())).status
        done.append((status, time.perf_counter() - began))

    await asyncio.gather(*(one() for _ in range(10)))
    waited = [t for s, t in done if s == 200]
    refused = [t for s, t in done if s == 401]
    assert len(waited) == 3 and len(refused) == 7
    assert max(refused) < 0.2 < min(waited)  # the refused did not wait for the fetch
    assert waits(rig) == {"landed": 3, "failed": 0, "capped": 7}
    assert rig.manager._fetchers[next(iter(rig.manager._fetchers))].waiters == 0


async def test_a_waiter_gone_does_not_cancel_the_fetch_for_the_others(
        idp: Idp, make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.publish_k2(delay=0.2)
    gone = asyncio.ensure_future(answer(rig.check()))
    stays = asyncio.ensure_future(answer(rig.check()))
    await asyncio.sleep(0.05)
    gone.cancel()  # its client went away
    assert (await stays).status == 200
    assert rig.service.in_flight == 0


async def test_a_zero_wait_answers_at_once(
        idp: Idp, make_rig: MakeRig) -> None:
    """``--jwks-refetch-wait 0``: the refetch still runs, nobody waits for it."""
    rig = await make_rig(wait=0.0)
    rig.publish_k2(delay=0.2)
    result = rig.check()
    assert isinstance(result, HttpResponse) and result.status == 401
    await asyncio.sleep(0.4)
    assert idp.hits == 2  # the refetch ran: the next request is allowed
    assert (await answer(rig.check())).status == 200


@pytest.mark.parametrize("wait", [-0.1, 10.5])
def test_the_wait_is_bounded(wait: float) -> None:
    with pytest.raises(ConfigError, match="--jwks-refetch-wait"):
        Settings(jwks_refetch_wait=wait)
