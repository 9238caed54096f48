from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from authz.authn.engine import Authenticator, AuthnFailure, AuthnSuccess
from authz.authn.jwks import JwksManager, JwksSettings, JwksSource
from authz.policy.request_authentication import JwtRule
from tests.authn.helpers import NOW, claims, jwks, rsa_key, serve_app, view


@dataclass
class Issuer:
    """A JWKS server whose behaviour each test steers."""

    body: str = ""
    status: int = 200
    delay: float = 0.0
    etag: str | None = None
    max_age: int | None = None
    hits: list[dict[str, str]] = field(default_factory=list)
    discovery_hits: int = 0
    base: str = ""

    async def keys(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(dict(request.headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {}
        if self.max_age is not None:
            headers["Cache-Control"] = f"public, max-age={self.max_age}"
        if self.etag:
            headers["ETag"] = self.etag
            if request.headers.get("If-None-Match") == self.etag:
                return web.Response(status=304, headers=headers)
        return web.Response(status=self.status, text=self.body, headers=headers,
                            content_type="application/json")

    async def discovery(self, request: web.Request) -> web.StreamResponse:
        self.discovery_hits += 1
        return web.json_response({"issuer": self.base, "jwks_uri": f"{self.base}/keys"})


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    state = Issuer(body=jwks(rsa_key("k1").jwk()))
    app = web.Application()
    app.router.add_get("/keys", state.keys)
    app.router.add_get("/oidc/.well-known/openid-configuration", state.discovery)
    runner, state.base = await serve_app(app)
    yield state
    await runner.cleanup()


@dataclass
class FakeClock:
    """The manager's clock (its refetch rate limit and timestamps): moves only when told."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def manager(clock: FakeClock) -> AsyncIterator[JwksManager]:
    m = JwksManager(JwksSettings(refresh_interval=3600, min_refresh_interval=0.05,
                                 refetch_min_interval=0.3, backoff_initial=0.05,
                                 backoff_max=0.1, max_body_bytes=64 * 1024), clock=clock)
    await m.start()
    yield m
    await m.stop()


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Wait for something the fetch loop does on its own schedule (an HTTP round trip,
    a refresh the loop's timer starts): as long as it takes, failing after ``within``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        await asyncio.sleep(0.01)


def refetch_pending(manager: JwksManager) -> bool:
    """Whether a refetch was let through: a fetcher woken or fetching."""
    return any(f.wake.is_set() or f.in_flight for f in manager._fetchers.values())


def rule(issuer: Issuer, **kw: Any) -> JwtRule:
    kw.setdefault("jwks_uri", f"{issuer.base}/keys")
    return JwtRule("issuer-1", **kw)


async def test_initial_fetch_shared_uri_and_ready(issuer: Issuer, manager: JwksManager) -> None:
    r1, r2 = rule(issuer), JwtRule("issuer-2", jwks_uri=f"{issuer.base}/keys", timeout=9)
    manager.set_rules([r1, r2])
    assert await manager.wait_ready(5)
    assert len(issuer.hits) == 1
    keys = manager.keys_for(r1)
    assert keys is not None and keys.kids == {"k1"}
    assert manager.keys_for(r2) is keys
    assert manager.ready
    (status,) = manager.status()
    assert status.keys == 1 and status.last_error is None


async def test_engine_uses_live_keys(issuer: Issuer, manager: JwksManager) -> None:
    r = rule(issuer)
    manager.set_rules([r])
    await manager.wait_ready(5)
    token = rsa_key("k1").sign(claims())
    res = Authenticator([r], manager).authenticate(
        view(headers={"authorization": f"Bearer {token}"}), NOW)
    assert isinstance(res, AuthnSuccess) and res.claims is not None


async def test_rotation_via_max_age(issuer: Issuer, manager: JwksManager) -> None:
    issuer.max_age = 0  # clamped to min_refresh_interval (50 ms here)
    r = rule(issuer)
    manager.set_rules([r])
    await manager.wait_ready(5)
    before = manager.generation
    issuer.body = jwks(rsa_key("k2", seed=1).jwk())
    for _ in range(100):
        keys = manager.keys_for(r)
        if keys is not None and keys.kids == {"k2"}:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("rotated key set never published")
    assert manager.generation is not before  # remembered decisions end with the old keys


async def test_server_error_keeps_last_good_and_backs_off(
        issuer: Issuer, manager: JwksManager) -> None:
    issuer.max_age = 0
    r = rule(issuer)
    manager.set_rules([r])
    await manager.wait_ready(5)
    good = manager.keys_for(r)
    issuer.status = 500
    await until(lambda: manager.status()[0].consecutive_failures >= 2, "two failed refreshes")
    assert manager.keys_for(r) is good
    assert "HTTP 500" in (manager.status()[0].last_error or "")
    failures_before = len(issuer.hits)
    await asyncio.sleep(0.3)
    # Backoff capped at 100 ms with jitter: a handful of retries, not a hot loop.
    assert len(issuer.hits) - failures_before < 10
    issuer.status = 200
    await until(lambda: manager.status()[0].consecutive_failures == 0, "a good refresh")
    assert manager.keys_for(r) is not good  # the refreshed set, published anew


async def test_first_fetch_failure_is_ready_without_keys(
        issuer: Issuer, manager: JwksManager) -> None:
    issuer.status = 404
    r = rule(issuer)
    manager.set_rules([r])
    assert await manager.wait_ready(5)
    assert manager.keys_for(r) is None
    token = rsa_key("k1").sign(claims())
    res = Authenticator([r], manager).authenticate(
        view(headers={"authorization": f"Bearer {token}"}), NOW)
    assert isinstance(res, AuthnFailure) and res.body == "Jwks remote fetch is failed"


async def test_timeout(issuer: Issuer, manager: JwksManager) -> None:
    issuer.delay = 0.5
    r = rule(issuer, timeout=0.01)
    manager.set_rules([r])
    assert await manager.wait_ready(5)
    assert manager.keys_for(r) is None
    assert "Timeout" in (manager.status()[0].last_error or "")


async def test_wait_ready_times_out(issuer: Issuer, manager: JwksManager) -> None:
    issuer.delay = 1.0
    manager.set_rules([rule(issuer, timeout=5)])
    assert not await manager.wait_ready(0.05)


async def test_etag_conditional_refresh(issuer: Issuer, manager: JwksManager) -> None:
    issuer.etag, issuer.max_age = '"v1"', 0
    r = rule(issuer)
    manager.set_rules([r])
    await manager.wait_ready(5)
    first = manager.keys_for(r)
    await until(lambda: len(issuer.hits) >= 2 and not refetch_pending(manager), "a refresh")
    assert issuer.hits[1].get("If-None-Match") == '"v1"'
    assert manager.keys_for(r) is first  # 304: the same published object
    assert manager.status()[0].consecutive_failures == 0


async def test_unknown_kid_refetch_is_single_flight_and_rate_limited(
        issuer: Issuer, manager: JwksManager, clock: FakeClock) -> None:
    r = rule(issuer)
    manager.set_rules([r])
    await manager.wait_ready(5)
    # The scheduled first fetch just ran, and holds no refetch back: the provider may
    # have published a key a moment after it (a rotation racing a refresh).
    manager.request_refetch(r)
    assert refetch_pending(manager)
    await until(lambda: len(issuer.hits) == 2 and not refetch_pending(manager), "a refetch")
    issuer.body = jwks(rsa_key("k1").jwk(), rsa_key("k2", seed=1).jwk())
    a = Authenticator([r], manager)
    token = rsa_key("k2", seed=1).sign(claims())
    req = view(headers={"authorization": f"Bearer {token}"})
    for _ in range(20):  # inside the refetch's window: answered from the keys at hand
        assert isinstance(a.authenticate(req, NOW), AuthnFailure)
    assert not refetch_pending(manager) and len(issuer.hits) == 2
    clock.advance(0.35)  # past it
    for _ in range(20):
        assert isinstance(a.authenticate(req, NOW), AuthnFailure)  # answered from current keys
    await until(lambda: len(issuer.hits) == 3 and not refetch_pending(manager), "one refetch")
    assert isinstance(a.authenticate(req, NOW), AuthnSuccess)
    for _ in range(5):
        manager.request_refetch(r)
    assert not refetch_pending(manager) and len(issuer.hits) == 3  # inside the window
    clock.advance(0.35)
    manager.request_refetch(r)
    assert refetch_pending(manager)  # the window, not anything else, held them back
    await until(lambda: len(issuer.hits) == 4, "the refetch after the window")


async def test_refetch_from_another_thread(issuer: Issuer, manager: JwksManager,
                                          clock: FakeClock) -> None:
    r = rule(issuer)
    manager.set_rules([r])
    await manager.wait_ready(5)
    clock.advance(0.35)
    await asyncio.to_thread(manager.request_refetch, r)
    await until(lambda: len(issuer.hits) == 2, "the refetch asked from another thread")


async def test_oidc_discovery(issuer: Issuer, manager: JwksManager) -> None:
    r = JwtRule(f"{issuer.base}/oidc/")
    assert JwksSource.for_rule(r) == JwksSource(issuer=r.issuer)
    assert JwksSource.for_rule(r).discovery_url == (  # type: ignore[union-attr]
        f"{issuer.base}/oidc/.well-known/openid-configuration")
    manager.set_rules([r])
    await manager.wait_ready(5)
    keys = manager.keys_for(r)
    assert keys is not None and keys.kids == {"k1"} and issuer.discovery_hits == 1


async def test_body_size_limit_and_bad_json(issuer: Issuer, manager: JwksManager) -> None:
    issuer.body = json.dumps({"keys": [], "pad": "x" * 70_000})
    r = rule(issuer)
    manager.set_rules([r])
    await manager.wait_ready(5)
    assert manager.keys_for(r) is None
    assert "larger than" in (manager.status()[0].last_error or "")


async def test_no_usable_keys_is_a_failure(issuer: Issuer, manager: JwksManager) -> None:
    issuer.body = '{"keys": [{"kty": "RSA"}]}'
    manager.set_rules([rule(issuer)])
    await manager.wait_ready(5)
    assert "Jwks doesn't have any valid public key" in (manager.status()[0].last_error or "")


async def test_set_rules_drops_unused_sources(issuer: Issuer, manager: JwksManager) -> None:
    r = rule(issuer)
    manager.set_rules([r])
    await manager.wait_ready(5)
    manager.set_rules([JwtRule("inline", jwks=jwks(rsa_key().jwk()))])
    assert manager.keys_for(r) is None and manager.status() == ()


async def test_set_rules_requires_start() -> None:
    with pytest.raises(RuntimeError):
        JwksManager().set_rules([])



async def test_the_refresh_interval_is_honoured_below_the_max_age_floor(issuer: Issuer) -> None:
    # --jwks-refresh-interval 0.2 (tests' scale of 1 s) with the 30 s floor that bounds
    # a server's max-age: the operator's interval wins, the floor is for max-age only.
    m = JwksManager(JwksSettings(refresh_interval=0.2, min_refresh_interval=30.0))
    await m.start()
    try:
        r = rule(issuer)
        m.set_rules([r])
        await m.wait_ready(5)
        issuer.body = jwks(rsa_key("k2", seed=1).jwk())
        for _ in range(100):
            keys = m.keys_for(r)
            if keys is not None and keys.kids == {"k2"}:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the key set was not refreshed at the operator's interval")
    finally:
        await m.stop()
