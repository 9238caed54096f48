"""The JWKS manager: fetches remote key sets and publishes them for the request path.

Istio's default (istiod) mode fetches every ``jwksUri`` in the control plane,
refreshes it every ``PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`` (20 minutes), and
inlines the keys into Envoy; a rule with neither ``jwks`` nor ``jwksUri`` gets
its URI from OIDC discovery (reference A.6). This manager does the same job in
process:

- one fetcher per distinct source (a URI, or an issuer to discover), shared by
  every rule that names it; its timeout is the largest of those rules';
- the first attempt for each source is awaitable (``wait_ready``) so a server
  can hold readiness until every key set was tried once;
- refresh every ``refresh_interval``, sooner when ``Cache-Control: max-age``
  says so (never more often than ``min_refresh_interval``), with
  ``If-None-Match`` so an unchanged set costs a 304;
- a failed fetch keeps the last good set and retries with exponential
  backoff and jitter; a body over ``max_body_bytes`` or a set with no usable
  key counts as a failure;
- a token with an unknown ``kid`` may trigger an early refetch
  (``request_refetch``): single-flight and at most once per
  ``refetch_min_interval`` per source (counted between refetches: a scheduled
  fetch does not hold one back), callable from any thread. On the loop it
  hands back the fetch in flight (a ``Refetch``), which the server may await,
  bounded, before answering: a key rotation then costs the new kid's first
  requests a fetch's latency instead of a 401. At most ``max_waiters`` requests
  wait per source; the rest, like every rate-limited kid, are answered at once;
- TLS certificates are always verified (system roots, or ``ca_bundle``).

Published key sets are immutable and replaced whole; ``keys_for`` is a plain
dict read, safe from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import aiohttp
import structlog

from authz.authn.keys import KeySet, parse_jwks
from authz.errors import AuthzError
from authz.policy.request_authentication import JwtRule, check_jwks_uri

__all__ = [
    "FetchError", "JwksManager", "JwksSettings", "JwksSource", "Refetch", "SourceStatus",
    "describe",
]

log = structlog.get_logger("authz.authn.jwks")

DEFAULT_REFRESH_INTERVAL = 20 * 60.0
"""Istio's ``PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`` default."""
DISCOVERY_PATH = "/.well-known/openid-configuration"
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class JwksSource:
    """Where a rule's keys come from: a URI, or OIDC discovery from its issuer."""

    uri: str = ""
    issuer: str = ""

    @classmethod
    def for_rule(cls, rule: JwtRule) -> JwksSource | None:
        """None for an inline ``jwks`` rule (nothing to fetch)."""
        if rule.jwks:
            return None
        if rule.jwks_uri:
            return cls(uri=rule.jwks_uri)
        return cls(issuer=rule.issuer)

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY_PATH

    def __str__(self) -> str:
        return self.uri or f"discovery:{self.discovery_url}"


@dataclass(frozen=True, slots=True)
class JwksSettings:
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL
    min_refresh_interval: float = 30.0
    """Floor for a server's ``max-age``, so a tiny value cannot make us hammer it."""
    refetch_min_interval: float = 30.0
    """Unknown-kid refetches: at most one per source per this many seconds."""
    max_waiters: int = 1024
    """Requests that may wait at once for one source's fetch in flight (``Refetch``).
    Anyone can mint a token with an unknown kid, so waiting must not grow without
    bound: past this, a request is answered from the keys at hand, as if rate-limited."""
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    max_body_bytes: int = 1024 * 1024
    ca_bundle: str | None = None
    user_agent: str = "authz-jwks/1"


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """What an operator sees per source (admin/health); no key material."""

    source: str
    keys: int
    kids: tuple[str, ...]
    last_success: float | None
    last_error: str | None
    consecutive_failures: int
    fetches: Mapping[str, int] = field(default_factory=dict)
    """Attempts by outcome: ``updated``, ``not_modified``, ``failed``."""
    keys_updated: float | None = None
    """Clock time the key set in use was published (its age is now minus this)."""
    waits: Mapping[str, int] = field(default_factory=dict)
    """Requests that met an unknown kid during a fetch, by how their wait ended:
    ``landed`` (the fetch brought keys), ``failed`` (it failed or took too long),
    ``capped`` (``max_waiters`` already waited: answered at once)."""


class FetchError(AuthzError):
    """A JWKS or OIDC discovery fetch failed; the message is safe to log. Check the
    URL, the network path and ``--jwks-ca-file``; the last good keys stay in use."""


@dataclass(frozen=True, slots=True)
class _Result:
    keys: KeySet | None
    etag: str | None
    max_age: float | None


class _Fetcher:
    """Owns one source: its task, its last good key set and its schedule."""

    def __init__(self, manager: JwksManager, source: JwksSource, timeout: float) -> None:
        self.manager = manager
        self.source = source
        self.timeout = timeout
        self.etag: str | None = None
        self.etag_uri = ""
        self.first_done = asyncio.Event()
        self.wake = asyncio.Event()
        self.in_flight = False
        self.last_poke = float("-inf")
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.outcomes: dict[str, int] = {"updated": 0, "not_modified": 0, "failed": 0}
        self.keys_updated: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.landing: asyncio.Future[bool] | None = None
        """Resolved when the fetch running (or woken) ends: True if it succeeded.
        Created only when a request asks to wait for it."""
        self.waiters = 0
        """Requests awaiting ``landing`` now (``Refetch.wait``)."""
        self.waits: dict[str, int] = {"landed": 0, "failed": 0, "capped": 0}

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"jwks:{self.source}")

    async def _run(self) -> None:
        try:
            while True:
                delay = await self._attempt()
                self.first_done.set()
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=delay)
        finally:  # stopped (source dropped, manager stopped): nobody waits for nothing
            self._land(False)

    @property
    def busy(self) -> bool:
        """A fetch is running, or was woken and is about to."""
        return self.in_flight or self.wake.is_set()

    def landed(self) -> asyncio.Future[bool]:
        """The future the running (or woken) fetch resolves; call only when ``busy``."""
        if self.landing is None:
            self.landing = asyncio.get_running_loop().create_future()
        return self.landing

    def _land(self, ok: bool) -> None:
        landing, self.landing = self.landing, None
        if landing is not None and not landing.done():
            landing.set_result(ok)

    def poke(self) -> None:
        """Unknown kid: fetch now unless a fetch is already running (its rate limit
        is ``request_refetch``'s). A scheduled fetch that just ran does not hold it
        back: the provider may have published the new key a moment after it."""
        if not self.busy:
            self.wake.set()

    async def _attempt(self) -> float:
        settings = self.manager.settings
        self.in_flight = True
        try:
            result = await self._fetch()
        except FetchError as exc:
            return self._failed(str(exc))
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            return self._failed(f"{type(exc).__name__}: {exc}" if str(exc)
                                else type(exc).__name__)
        finally:
            self.in_flight = False
        self.outcomes["updated" if result.keys is not None else "not_modified"] += 1
        if result.keys is not None:
            self.keys_updated = self.manager.clock()
            self.manager._publish(self.source, result.keys)
            log.info("jwks_updated", source=str(self.source), keys=len(result.keys.keys),
                     kids=sorted(result.keys.kids), skipped=list(result.keys.skipped))
        self.etag = result.etag
        self.failures = 0
        self.last_error = None
        self.last_success = self.manager.clock()
        self._land(True)  # after _publish: a waiter decides again with the new keys
        interval = settings.refresh_interval
        if result.max_age is not None and result.max_age < interval:
            # The floor bounds what a server asks for; the operator's own interval
            # (--jwks-refresh-interval, >= 1 s) is honoured as given.
            interval = max(min(settings.min_refresh_interval, interval), result.max_age)
        return interval

    def _failed(self, error: str) -> float:
        settings = self.manager.settings
        self.failures += 1
        self.outcomes["failed"] += 1
        self.last_error = error
        self._land(False)
        delay: float = min(settings.backoff_max, settings.refresh_interval,
                    settings.backoff_initial * 2.0 ** min(self.failures - 1, 30))
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        log.warning("jwks_fetch_failed", source=str(self.source), error=error,
                    failures=self.failures, retry_in=round(delay, 3),
                    keeping_last_good=self.manager.keys_for_source(self.source) is not None)
        return delay

    async def _fetch(self) -> _Result:
        uri = self.source.uri
        if not uri:
            uri = await self._discover()
        if uri != self.etag_uri:
            self.etag, self.etag_uri = None, uri
        status, body, headers = await self.manager._get(uri, self.timeout, self.etag)
        max_age = _max_age(headers.get("Cache-Control", ""))
        if status == 304:
            return _Result(None, self.etag, max_age)
        keys = parse_jwks(body)
        if not keys.usable:
            detail = "; ".join(keys.skipped[:5])
            raise FetchError(f"{keys.error}" + (f" ({detail})" if detail else ""))
        return _Result(keys, headers.get("ETag"), max_age)

    async def _discover(self) -> str:
        url = self.source.discovery_url
        status, body, _ = await self.manager._get(url, self.timeout, None)
        if status != 200:
            raise FetchError(f"OIDC discovery {url}: HTTP {status}")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise FetchError(f"OIDC discovery {url}: invalid JSON") from exc
        uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
        if not isinstance(uri, str) or not uri:
            raise FetchError(f"OIDC discovery {url}: no jwks_uri string")
        problem = check_jwks_uri(uri)
        if problem:
            raise FetchError(f"OIDC discovery {url}: jwks_uri {problem}")
        return uri


class Refetch:
    """A key-set fetch in flight that a request whose token has an unknown ``kid``
    may wait for (``JwksManager.request_refetch``), as Envoy's jwt_authn holds a
    request while the JWKS fetch it needs runs rather than failing it."""

    __slots__ = ("_fetcher", "_landed")

    def __init__(self, fetcher: _Fetcher, landed: asyncio.Future[bool]) -> None:
        self._fetcher = fetcher
        self._landed = landed

    async def wait(self, limit: float) -> bool:
        """True once the fetch succeeded (its keys are published), within ``limit``
        seconds and the fetch's own timeout. False at once when ``max_waiters``
        requests already wait for this source; False when it failed or took too long."""
        fetcher = self._fetcher
        if limit <= 0:
            return False
        if fetcher.waiters >= fetcher.manager.settings.max_waiters:
            fetcher.waits["capped"] += 1
            return False
        fetcher.waiters += 1
        landed = False
        try:
            # Shielded: one waiter's timeout (or its client going away) must not
            # cancel what the others wait for.
            landed = await asyncio.wait_for(asyncio.shield(self._landed),
                                            min(limit, fetcher.timeout))
        except TimeoutError:
            pass
        finally:
            fetcher.waiters -= 1
        fetcher.waits["landed" if landed else "failed"] += 1
        return landed


def _max_age(cache_control: str) -> float | None:
    m = _MAX_AGE.search(cache_control)
    if m:
        return float(m.group(1))
    if "no-cache" in cache_control.lower() or "no-store" in cache_control.lower():
        return 0.0
    return None


class JwksManager:
    """Keeps one live key set per remote source. Start, ``set_rules``, ``wait_ready``."""

    def __init__(self, settings: JwksSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or JwksSettings()
        self.clock = clock
        self._keys: Mapping[JwksSource, KeySet] = MappingProxyType({})
        self._fetchers: dict[JwksSource, _Fetcher] = {}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Open the HTTP client; must run on the loop that will own the fetchers."""
        if self._session is not None:
            return
        self._loop = asyncio.get_running_loop()
        ssl_context = ssl.create_default_context(cafile=self.settings.ca_bundle)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context),
            headers={"User-Agent": self.settings.user_agent, "Accept": "application/json"},
        )

    async def stop(self) -> None:
        """Cancel every fetcher and close the client. Published keys stay readable."""
        fetchers = list(self._fetchers.values())
        self._fetchers.clear()
        for fetcher in fetchers:
            if fetcher.task is not None:
                fetcher.task.cancel()
        for fetcher in fetchers:
            if fetcher.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await fetcher.task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def set_rules(self, rules: Iterable[JwtRule]) -> None:
        """Fetch for exactly these rules' sources: start new ones, stop unused ones.

        Call on the manager's loop (after ``start``), e.g. on every policy reload.
        Key sets of sources still in use are kept, so a reload does not drop keys.
        """
        if self._session is None:
            raise RuntimeError("JwksManager.start() must be awaited first")
        wanted: dict[JwksSource, float] = {}
        for rule in rules:
            source = JwksSource.for_rule(rule)
            if source is not None:
                wanted[source] = max(wanted.get(source, 0.0), rule.timeout)
        for source in list(self._fetchers):
            if source not in wanted:
                fetcher = self._fetchers.pop(source)
                if fetcher.task is not None:
                    fetcher.task.cancel()
        self._keys = MappingProxyType({s: k for s, k in self._keys.items() if s in wanted})
        for source, timeout in wanted.items():
            existing = self._fetchers.get(source)
            if existing is not None:
                existing.timeout = timeout
                continue
            fetcher = _Fetcher(self, source, timeout)
            self._fetchers[source] = fetcher
            fetcher.start()

    async def wait_ready(self, within: float | None = None) -> bool:
        """True once every current source finished its first attempt (good or not).

        False if that takes longer than ``within`` seconds (None: wait as long as it takes).
        """
        events = [f.first_done.wait() for f in self._fetchers.values()]
        if not events:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*events), within)
        except TimeoutError:
            return False
        return True

    @property
    def ready(self) -> bool:
        return all(f.first_done.is_set() for f in self._fetchers.values())

    def keys_for(self, rule: JwtRule) -> KeySet | None:
        """The rule's current key set, or None if no fetch has succeeded yet. Never blocks."""
        source = JwksSource.for_rule(rule)
        return None if source is None else self._keys.get(source)  # None: inline jwks

    @property
    def generation(self) -> object:
        """The published mapping itself: every change replaces it whole."""
        return self._keys

    def keys_for_source(self, source: JwksSource) -> KeySet | None:
        return self._keys.get(source)

    def request_refetch(self, rule: JwtRule) -> Refetch | None:
        """Early refetch for an unknown kid. Rate-limited; callable from any thread.

        On the manager's loop: the fetch running (a scheduled one counts) or the one
        this call started, for the caller to wait on; None when none runs and the
        rate limit holds one back. From another thread: fire and forget (None)."""
        source = JwksSource.for_rule(rule)
        fetcher = self._fetchers.get(source) if source is not None else None
        loop = self._loop
        if fetcher is None or loop is None or loop.is_closed():
            return None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop and fetcher.busy:
            return Refetch(fetcher, fetcher.landed())
        now = self.clock()
        if now - fetcher.last_poke < self.settings.refetch_min_interval:
            return None
        fetcher.last_poke = now
        if running is not loop:
            loop.call_soon_threadsafe(fetcher.poke)
            return None
        fetcher.poke()
        return Refetch(fetcher, fetcher.landed())

    def status(self) -> tuple[SourceStatus, ...]:
        out = []
        for source, fetcher in self._fetchers.items():
            keys = self._keys.get(source)
            out.append(SourceStatus(
                source=str(source), keys=len(keys.keys) if keys else 0,
                kids=tuple(sorted(keys.kids)) if keys else (),
                last_success=fetcher.last_success, last_error=fetcher.last_error,
                consecutive_failures=fetcher.failures,
                fetches=dict(fetcher.outcomes), keys_updated=fetcher.keys_updated,
                waits=dict(fetcher.waits),
            ))
        return tuple(out)

    def _publish(self, source: JwksSource, keys: KeySet) -> None:
        if source not in self._fetchers:
            return
        updated = dict(self._keys)
        updated[source] = keys
        self._keys = MappingProxyType(updated)

    async def _get(self, url: str, limit_seconds: float,
                   etag: str | None) -> tuple[int, bytes, Mapping[str, str]]:
        session = self._session
        if session is None:
            raise FetchError("manager stopped")
        headers = {"If-None-Match": etag} if etag else {}
        limit = self.settings.max_body_bytes
        async with session.get(url, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=limit_seconds)) as resp:
            if resp.status == 304:
                return 304, b"", resp.headers
            if resp.status != 200:
                raise FetchError(f"GET {url}: HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > limit:
                raise FetchError(f"GET {url}: body larger than {limit} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(65536):
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"GET {url}: body larger than {limit} bytes")
                chunks.append(chunk)
            return 200, b"".join(chunks), resp.headers


def describe(manager: JwksManager) -> list[dict[str, Any]]:
    """``status()`` as plain data for an admin endpoint."""
    return [
        {"source": s.source, "keys": s.keys, "kids": list(s.kids),
         "last_success": s.last_success, "last_error": s.last_error,
         "consecutive_failures": s.consecutive_failures}
        for s in manager.status()
    ]
