"""The async shell: gRPC wiring, health, reflection, admin, lifecycle and signals.

Everything here is transport; decisions come from ``Snapshot.evaluate``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as reflection_v1alpha
from prometheus_client import generate_latest

from authz import __version__, eventloop, heap
from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.admin import AdminServer
from authz.authn.engine import PendingKeys
from authz.authn.jwks import JwksManager, JwksSettings, describe
from authz.config import Settings, format_address, parse_address
from authz.decision import Decision, Reason
from authz.decision_log import DecisionLog, JsonLineBatcher
from authz.envoy.request_view import view_from_check_request
from authz.envoy.response import response_bytes
from authz.errors import ListenError
from authz.eventloop import current_loop_name
from authz.explain.debug import explain_request
from authz.health import HealthServicer
from authz.http.frontdoors import Door, door_of, view_from_http
from authz.http.listener import HttpCheckListener
from authz.http.protocol import HttpRequest, HttpResponse, prepared
from authz.http.render import echoed, render, with_echo
from authz.memo import CacheSizes
from authz.observe import TRANSPORTS, Metrics, resolved_format
from authz.pipeline.snapshot import (
    PolicyOptions,
    Snapshot,
    SnapshotStore,
    compile_snapshot,
    empty_snapshot,
)
from authz.policy.errors import PolicyError, PolicyErrors
from authz.policy.load import iter_paths
from authz.policy.watch import ChangedDuringRead, Fingerprint, PolicyWatcher, read_unchanged
from authz.request.scope import ScopeError
from authz.request.view import RequestView
from authz.tls import CertificateReloader, TlsError, TlsFiles, peer_principal
from authz.tracing import Tracing

__all__ = [
    "AUTHORIZATION_SERVICE", "AuthorizationService", "AuthzServer", "add_authorization_service",
    "probe_bind", "run_server",
]

log = structlog.get_logger("authz.server")

AUTHORIZATION_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
HEALTH_SERVICES = ("", AUTHORIZATION_SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


_JWT_FAILURES = frozenset({Reason.JWT_INVALID, Reason.JWT_AUDIENCE})

DRAIN_IDLE = 0.1
"""During the drain delay, once no Check has arrived for this long the callers have
moved away: stop waiting and go on to stop accepting."""
READ_ATTEMPTS = 10
"""Reads of the policy files retried when the files change during a read."""
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
NOT_A_DOOR = HttpResponse(404, (("content-type", "text/plain"),),
                          b"authz: no front door here; use /envoy/..., /nginx or /traefik\n")
HEALTH_PATH = "/readyz"
READY = HttpResponse(200, (("content-type", "text/plain"),), b"ready\n")
NOT_READY = HttpResponse(503, (("content-type", "text/plain"),), b"not ready\n")
INTERNAL_ERROR = HttpResponse(500, (("content-type", "text/plain"),), b"authz internal error\n")


class _Undecodable:
    """What the request deserializer returns for bytes that are not a CheckRequest:
    ``Check`` answers INVALID_ARGUMENT with one log line, not gRPC's traceback."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _decode_check_request(data: bytes) -> external_auth_pb2.CheckRequest | _Undecodable:
    try:
        return external_auth_pb2.CheckRequest.FromString(data)
    except DecodeError:
        return _Undecodable(len(data))


def _reflection_v1_pool() -> descriptor_pool.DescriptorPool:
    """The default pool, plus ``grpc.reflection.v1`` built from v1alpha's descriptor:
    v1 is the same protocol under a new package name, and grpcio-reflection ships
    only v1alpha, so a client asking v1 about v1 gets a real answer."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1)
        return pool
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_v1alpha.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    for message in proto.message_type:
        for fld in message.field:
            if fld.HasField("type_name"):
                fld.type_name = fld.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)
    return pool


def enable_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    """Server reflection as both ``grpc.reflection.v1alpha`` and ``grpc.reflection.v1``
    (newer clients, e.g. ``buf curl --reflect-protocol grpc-v1``, ask v1 only). The
    messages are identical on the wire, so one servicer answers both."""
    names = (*services, reflection.SERVICE_NAME, REFLECTION_V1)
    servicer = reflection.aio.ReflectionServicer(names, pool=_reflection_v1_pool())
    for service in (reflection.SERVICE_NAME, REFLECTION_V1):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_v1alpha.ServerReflectionRequest.FromString,
            response_serializer=reflection_v1alpha.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),))


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame: enough to find a bug, carries no data."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def add_authorization_service(service: AuthorizationService, server: grpc.aio.Server) -> None:
    """What the generated ``add_AuthorizationServicer_to_server`` does, but ``Check``
    returns serialized bytes (``response_bytes``), so there is no response serializer:
    gRPC sends the bytes as they are. Like the generated code, it also registers the
    method with gRPC core, which then hands grpc.aio its calls on a queue of their own."""
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            service.Check,
            request_deserializer=_decode_check_request,
            response_serializer=None,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(AUTHORIZATION_SERVICE, handlers),))
    server.add_registered_method_handlers(AUTHORIZATION_SERVICE, handlers)


class AuthorizationService:
    """``envoy.service.auth.v3.Authorization``: CheckRequest -> view -> Decision -> response."""

    def __init__(
        self,
        store: SnapshotStore,
        settings: Settings,
        metrics: Metrics,
        decision_log: DecisionLog | None = None,
        tracing: Tracing | None = None,
        tls_peer: bool = False,
        health_poll: Callable[[str], None] | None = None,
    ) -> None:
        """``health_poll``: told of each ``/readyz`` poll on the HTTP check port."""
        self._store = store
        self._tls_peer = tls_peer
        """Mutual TLS: the client certificate names Envoy when the request does not."""
        self._decision_log = decision_log or DecisionLog("none")
        self._tracing = tracing or Tracing()
        self._default_namespace = settings.default_namespace
        self._metrics = metrics
        self._counters: dict[tuple[bool, int, Reason, str], Any] = {}
        self._latency = {t: metrics.check_latency.labels(t) for t in TRANSPORTS}
        self.in_flight = 0
        """Checks between arrival and answer (read by the in-flight gauge at scrape)."""
        metrics.in_flight.set_function(lambda: self.in_flight)
        self.answered = 0
        """Checks answered with a decision (logged at shutdown)."""
        self.last_arrival = time.perf_counter()
        """When the latest Check arrived: the drain delay ends early once calls stop."""
        self.ready = False
        """What the HTTP check port's /readyz says (the server sets it with health)."""
        self._health_poll: Callable[[str], None] | None = health_poll
        self._refetch_wait = settings.jwks_refetch_wait
        """Longest a Check waits for the key-set fetch an unknown kid needs (``_await_keys``)."""

    def flush_log(self) -> None:
        self._decision_log.flush()

    def _counter(self, decision: Decision, transport: str) -> Any:
        """The labelled child for a decision, keyed by the decision's own fields so a
        Check does not format the label strings (the set is small and fixed)."""
        key = (decision.allowed, decision.status, decision.reason, transport)
        child = self._counters.get(key)
        if child is None:
            child = self._metrics.checks.labels(
                "allow" if decision.allowed else "deny", str(decision.status),
                decision.reason.value, transport)
            self._counters[key] = child
        return child

    def _count(self, decision: Decision, transport: str) -> None:
        self._counter(decision, transport).inc()
        if decision.issuer is not None:
            # Issuers are the configured ones: a bounded label set.
            self._metrics.jwt_results.labels(decision.issuer, "verified").inc()
        elif decision.reason in _JWT_FAILURES:
            self._metrics.jwt_results.labels("", decision.reason.value).inc()

    def _after(self, view: RequestView | None, decision: Decision, latency: float,
               start_ns: int) -> None:
        """The decision line and the span, once the answer is built."""
        self._decision_log.emit(view, decision, latency)
        if start_ns:
            self._tracing.record(view, decision, start_ns, start_ns + int(latency * 1e9))
        self.answered += 1

    def decide(
        self, request: external_auth_pb2.CheckRequest, peer: str = ""
    ) -> tuple[RequestView | None, Decision]:
        """The decision now, whatever fetch is in flight (``Check`` may wait for one)."""
        view, decision, _ = self._decide(self._grpc_view(request, peer))
        return view, decision

    def _grpc_view(self, request: external_auth_pb2.CheckRequest, peer: str
                   ) -> Callable[[Snapshot], RequestView]:
        return lambda snapshot: view_from_check_request(
            request, self._default_namespace, snapshot.peer, snapshot.scope, peer)

    def _http_view(self, door: Door, request: HttpRequest) -> Callable[[Snapshot], RequestView]:
        return lambda snapshot: view_from_http(
            door, request, self._default_namespace, snapshot.peer, snapshot.scope)

    def _decide(self, build_view: Callable[[Snapshot], RequestView]
                ) -> tuple[RequestView | None, Decision, tuple[PendingKeys, ...]]:
        """The view the transport's adapter builds, then the snapshot's decision, and
        the key-set fetches in flight that could change it (``Snapshot.evaluate_pending``)."""
        snapshot = self._store.current  # read once: a reload never splits a decision
        try:
            view = build_view(snapshot)
        except ScopeError as exc:
            # The route's scope (context_extensions, or the HTTP door's scope headers
            # or query) is wrong: fail closed, say why.
            denied = Decision.deny(403, f"authz: invalid scope: {exc}", Reason.INVALID_SCOPE)
            return None, denied, ()
        decision, pending = snapshot.evaluate_pending(view, time.time())
        # --jwks-refetch-wait 0: nothing is waited for, so nothing is deferred either.
        return view, decision, pending if self._refetch_wait > 0 else ()

    async def _await_keys(
        self, build_view: Callable[[Snapshot], RequestView], view: RequestView | None,
        decision: Decision, pending: tuple[PendingKeys, ...],
    ) -> tuple[RequestView | None, Decision]:
        """A token refused only because its ``kid`` is not in the key set while that
        set is being fetched (an identity provider rotated its keys): wait for the
        fetch and decide again with the keys it brings, as Envoy's jwt_authn holds a
        request while the JWKS fetch it needs runs. At most ``--jwks-refetch-wait``
        seconds in all (and each fetch's own timeout); the loop is free meanwhile.
        A fetch that fails or is too slow, too many waiters on its source, or no
        fetch at all (the refetch rate limit): the refusal stands, as Envoy's."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._refetch_wait
        while pending:
            landed = False
            for keys in pending:
                landed = await keys.wait(deadline - loop.time()) or landed
            if not landed:
                break
            # The new keys may still lack the kid (the fetch began before the provider
            # published it): then a refetch of its own may run, and is waited for too.
            view, decision, pending = self._decide(build_view)
        return view, decision

    def check_http(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        """One HTTP check, synchronously on the loop (the protocol calls it as soon as
        the request is parsed): the same decision, counters, log line and span as
        ``Check``, rendered for the front door the path names. Only a token refused
        for an unknown kid while its keys are being fetched gets an awaitable answer
        instead (``_await_keys``); the protocol keeps answers in request order."""
        door = door_of(request.target)
        if door is None:
            if request.target == HEALTH_PATH:
                # Envoy's active health check of the check port (envoy-config
                # --transport http): what the gRPC health service says. Not a Check:
                # it does not hold the drain delay open, but the drain waits until
                # each such poller has been told (HealthServicer.http_poll).
                if self._health_poll is not None:
                    self._health_poll(f"http:{request.peer_ip}:{request.peer_port}")
                return READY if self.ready else NOT_READY
            self._metrics.check_errors.labels("bad_request", "http").inc()
            return NOT_A_DOOR
        start = self.last_arrival = time.perf_counter()
        start_ns = time.time_ns() if self._tracing.enabled else 0
        self.in_flight += 1
        try:
            build = self._http_view(door, request)
            view, decision, pending = self._decide(build)
        except Exception as exc:
            return self._http_failed(request, exc, start)
        if pending:
            return self._http_after_keys(request, door, build, view, decision, pending,
                                         start, start_ns)
        return self._http_answer(request, door, view, decision, start, start_ns)

    async def _http_after_keys(
        self, request: HttpRequest, door: Door, build: Callable[[Snapshot], RequestView],
        view: RequestView | None, decision: Decision, pending: tuple[PendingKeys, ...],
        start: float, start_ns: int,
    ) -> HttpResponse:
        """``check_http``'s answer once the key-set fetches it waits for landed."""
        try:
            view, decision = await self._await_keys(build, view, decision, pending)
        except Exception as exc:
            return self._http_failed(request, exc, start)
        except BaseException:  # cancelled: the client went away
            self.in_flight -= 1
            raise
        return self._http_answer(request, door, view, decision, start, start_ns)

    def _http_answer(self, request: HttpRequest, door: Door, view: RequestView | None,
                     decision: Decision, start: float, start_ns: int) -> HttpResponse:
        """The decision rendered for ``door``; ends the Check ``check_http`` began."""
        try:
            # The snapshot's memo (Snapshot.answers): no await since _decide read it,
            # so this is the snapshot that decided.
            snapshot = self._store.current
            answers = snapshot.answers
            response: HttpResponse | None = answers.get(decision, door)
            if response is None:
                response = answers.put(decision, prepared(render(decision, door)), door)
            if door is not Door.ENVOY and view is not None:
                # Per request, after the memo: the token headers this request carried
                # that the decision keeps (authz.http.render.echoed).
                response = with_echo(response, echoed(
                    decision, view.headers, snapshot.token_locations))
        except Exception as exc:
            return self._http_failed(request, exc, start)
        self.in_flight -= 1
        latency = time.perf_counter() - start
        self._latency["http"].observe(latency)
        self._count(decision, "http")
        self._after(view, decision, latency, start_ns)
        return response

    def _http_failed(self, request: HttpRequest, exc: Exception, start: float) -> HttpResponse:
        """Not a deny: 500, so Envoy applies status_on_error / failure_mode_allow and
        nginx its own error (500), closed by default. Ends the Check."""
        self.in_flight -= 1
        self._latency["http"].observe(time.perf_counter() - start)
        self._metrics.check_errors.labels("internal", "http").inc()
        log.error("check_failed", error=type(exc).__name__, at=_where(exc),
                  request_id=request.headers.get("x-request-id", ""), transport="http")
        return INTERNAL_ERROR

    async def Check(
        self, request: external_auth_pb2.CheckRequest | _Undecodable,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bytes:
        """The serialized ``CheckResponse`` (see ``add_authorization_service``)."""
        start = self.last_arrival = time.perf_counter()
        if isinstance(request, _Undecodable):
            # Bytes that are no CheckRequest: the caller's bug, not ours, and no
            # stack trace (it would say nothing). One line, counted, INVALID_ARGUMENT.
            self._metrics.check_errors.labels("bad_request", "grpc").inc()
            log.warning("check_request_undecodable", size=request.size)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "authz: the request is not a CheckRequest")
            raise AssertionError("abort() raises")  # for the type checker
        start_ns = time.time_ns() if self._tracing.enabled else 0
        self.in_flight += 1
        try:
            # Envoy's own identity (its mTLS client certificate) stands in for a
            # destination principal the request does not carry (docs/tls.md).
            peer = (peer_principal(context.auth_context())
                    if self._tls_peer and not request.attributes.destination.principal else "")
            build = self._grpc_view(request, peer)
            view, decision, pending = self._decide(build)
            if pending:  # an unknown kid while its key set is being fetched: rare
                view, decision = await self._await_keys(build, view, decision, pending)
            response = response_bytes(decision, self._store.current.responses)
        except Exception as exc:
            # An internal failure is not a deny: answer with a gRPC error so Envoy
            # applies its own failure_mode_allow / status_on_error (closed by default).
            self._metrics.check_errors.labels("internal", "grpc").inc()
            log.error("check_failed", error=type(exc).__name__, at=_where(exc),
                      request_id=request.attributes.request.http.id)
            failed = True
        else:
            failed = False
            self._count(decision, "grpc")
        finally:
            self.in_flight -= 1
            latency = time.perf_counter() - start
            self._latency["grpc"].observe(latency)
        if failed:
            await context.abort(grpc.StatusCode.INTERNAL, "authz internal error")
        self._after(view, decision, latency, start_ns)
        return response


class AuthzServer:
    """One server process: gRPC (Check, health, reflection) plus the admin HTTP port."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.policy_options = PolicyOptions(
            root_namespace=settings.root_namespace,
            trust_domain=settings.trust_domain,
            trust_domain_aliases=settings.trust_domain_aliases,
            xff_num_trusted_hops=settings.xff_num_trusted_hops,
            caches=CacheSizes(
                tokens=settings.token_cache_size,
                rejected_tokens=settings.rejected_token_cache_size,
                decisions=settings.decision_cache_size,
                scopes=settings.scope_cache_size,
            ),
        )
        self.jwks = JwksManager(JwksSettings(
            refresh_interval=settings.jwks_refresh_interval,
            refetch_min_interval=settings.jwks_refetch_interval,
            ca_bundle=settings.jwks_ca_file,
        ))
        self.metrics.watch_jwks(self.jwks)
        self._token_lookups = self.metrics.watch_cache(
            "token_cache", "Verified-token cache",
            lambda: self.store.current.authenticator.cache)
        self._decision_lookups = self.metrics.watch_cache(
            "decision_cache", "Decisions of repeated requests", lambda: self.store.current.recent)
        self.tracing = Tracing(settings.otel_endpoint)
        self.store = SnapshotStore(empty_snapshot(self.policy_options))
        self.health = HealthServicer()
        self.ready = False
        self.draining = False
        self.grpc_port: int | None = None
        self.tls: CertificateReloader | None = None
        self.service: AuthorizationService | None = None
        self._grpc: grpc.aio.Server | None = None
        self._admin: AdminServer | None = None
        self._http: HttpCheckListener | None = None
        self.http_check_port: int | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[bool]] = set()
        self.last_reload_error: str | None = None
        self._read_fingerprint: Fingerprint | None = None
        """The files as the latest read saw them: where the watcher starts from."""
        self._watcher = PolicyWatcher(
            settings.policy_paths, self.reload, interval=settings.watch_interval,
            settle=settings.watch_settle,
        )

    # -- admin ---------------------------------------------------------------
    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {
            "ready": self.ready,
            "draining": self.draining,
            "snapshot_version": self.store.current.version,
            "last_reload_error": self.last_reload_error,
            "policies": policy_summary(self.store.current, self.settings.policy_paths),
            "jwks": describe(self.jwks),
            "tls": self.tls.describe() if self.tls is not None else {"enabled": False},
            # What --event-loop auto chose (a benchmark reads it rather than assume it).
            "event_loop": current_loop_name(),
            # What gRPC core read at import (authz/grpc_env.py); None: its defaults.
            "grpc_experiments": os.environ.get("GRPC_EXPERIMENTS"),
        }

    async def metrics_text(self) -> bytes:
        return generate_latest(self.metrics.registry)

    async def debug_explain(self, body: bytes) -> tuple[int, bytes]:
        """``POST /debug/explain`` (``--enable-debug-endpoints``): against the snapshot
        serving now; as synchronous as a Check, and as short."""
        return explain_request(self.store.current, body, time.time(),
                               self.settings.default_namespace)

    # -- lifecycle -------------------------------------------------------------
    def _compile_unchanged(self, version: int) -> Snapshot:
        """``_compile``, discarded (``ChangedDuringRead``) if the files moved meanwhile."""
        snapshot, self._read_fingerprint = read_unchanged(
            self.settings.policy_paths, lambda: self._compile(version))
        return snapshot

    def _compile(self, version: int) -> Snapshot:
        # Streamed: each resource is compiled and dropped as it is read, so peak
        # memory is the compiled snapshot, not every spec at once.
        problems: list[PolicyError] = []
        resources = iter_paths(self.settings.policy_paths, self.settings.default_namespace,
                               problems)
        try:
            snapshot = compile_snapshot(resources, version, self.policy_options, self.jwks)
        except PolicyErrors as exc:
            raise PolicyErrors([*problems, *exc.errors]) from None
        if problems:
            raise PolicyErrors(problems)
        return snapshot

    def _jwks_wait_limit(self, *snapshots: Snapshot) -> float:
        """First attempts are bounded by each rule's timeout (discovery makes two calls)."""
        timeouts = [r.timeout for s in snapshots for r in s.jwt_rules] or [0.0]
        return 2 * max(timeouts) + 5.0

    async def _fetch_keys_for(self, *snapshots: Snapshot) -> None:
        rules = [r for s in snapshots for r in s.jwt_rules]
        self.jwks.set_rules(rules)
        if not await self.jwks.wait_ready(self._jwks_wait_limit(*snapshots)):
            log.warning("jwks_first_fetch_slow", sources=len(self.jwks.status()))

    def _install(self, snapshot: Snapshot, event: str) -> None:
        old = self.store.swap(snapshot)
        self._token_lookups.retire(old.authenticator.cache)
        self._decision_lookups.retire(old.recent)
        self.metrics.snapshot_version.set(snapshot.version)
        kinds = dict(snapshot.kinds)
        for kind, count in kinds.items():
            self.metrics.policies.labels(kind).set(count)
        log.info(event, version=snapshot.version, resources=kinds,
                 paths=list(self.settings.policy_paths))
        for warning in policy_summary(snapshot, self.settings.policy_paths)["warnings"]:
            log.warning("policies_allow_all", version=snapshot.version, warning=warning)
        del old
        heap.settle()

    def load_policies(self) -> None:
        """Load and compile ``--policy`` paths; raise PolicyErrors on any problem."""
        for _ in range(READ_ATTEMPTS - 1):
            try:
                snapshot = self._compile_unchanged(self.store.current.version + 1)
                break
            except ChangedDuringRead:
                log.info("policy_files_changed_during_read", retry_in=self.settings.watch_settle)
                time.sleep(self.settings.watch_settle)
        else:
            snapshot = self._compile(self.store.current.version + 1)
        self._install(snapshot, "policies_loaded")

    async def reload(self) -> bool:
        """Rebuild the snapshot off the event loop and swap it in; on any error keep
        serving the last good one. In-flight Checks finish on the snapshot they read."""
        async with self._reload_lock:
            try:
                snapshot = await self._read_settled()
            except PolicyErrors as exc:
                self.last_reload_error = str(exc)
                self.metrics.reloads.labels("failure").inc()
                log.error("policy_reload_failed", errors=[str(e) for e in exc.errors],
                          serving_version=self.store.current.version)
                return False
            # New JWKS sources get their first fetch before the snapshot that needs
            # them serves; the old snapshot's sources stay until it is replaced.
            await self._fetch_keys_for(self.store.current, snapshot)
            self._install(snapshot, "policies_reloaded")
            self.jwks.set_rules(snapshot.jwt_rules)
            self.last_reload_error = None
            self.metrics.reloads.labels("success").inc()
            return True

    async def _read_settled(self) -> Snapshot:
        """Compile the files, again after ``--watch-settle`` whenever they changed
        during the read: a file caught mid-write is never compiled."""
        for _ in range(READ_ATTEMPTS):
            try:
                return await asyncio.to_thread(
                    self._compile_unchanged, self.store.current.version + 1)
            except ChangedDuringRead:
                log.info("policy_files_changed_during_read", retry_in=self.settings.watch_settle)
                await self._watcher.settled()
        raise PolicyErrors([PolicyError(
            f"the policy files kept changing during {READ_ATTEMPTS} reads; "
            "kept the last good policies")])

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in HEALTH_SERVICES:
            await self.health.set(service, status)

    async def start(self) -> None:
        """Bind ports and start answering; readiness follows once policies load."""
        s = self.settings
        if s.tls_cert and s.tls_key:  # a bad certificate fails before any port is bound
            self.tls = CertificateReloader(TlsFiles(s.tls_cert, s.tls_key, s.tls_client_ca),
                                           self.metrics.registry)
        # The HTTP check port serves the same certificate (before the reloader runs,
        # so its first reload already builds the port's next context).
        http_tls = (self.tls.server_ssl_context()
                    if self.tls is not None and s.http_check_address else None)
        await self._set_health(NOT_SERVING)
        await self.jwks.start()
        server = grpc.aio.server(
            options=[
                # Only --workers shares the port; a lone server must own it.
                ("grpc.so_reuseport", int(self.settings.reuse_port)),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        self.service = AuthorizationService(
            self.store,
            self.settings,
            self.metrics,
            DecisionLog(
                # Decision lines are info lines: a quieter --log-level drops them.
                self.settings.decision_log if self.settings.log_level in ("debug", "info")
                else "none",
                self.settings.decision_log_sample_rate,
                self.settings.decision_log_headers,
                self.settings.redact_headers,
                # JSON lines are batched off the request path; a terminal's console
                # output stays line by line for the human watching it.
                JsonLineBatcher() if resolved_format(self.settings.log_format) == "json"
                else None,
                token_headers=lambda: self.store.current.authenticator.all_token_headers,
            ),
            self.tracing,
            tls_peer=self.tls is not None and self.tls.mutual,
            health_poll=self.health.http_poll,
        )
        add_authorization_service(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(server, (
            AUTHORIZATION_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
        host, port = parse_address(self.settings.grpc_address, "--grpc-address")
        probe_bind(host, port, self.settings.reuse_port, "gRPC")
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:  # grpc says only RuntimeError("Failed to bind ...")
            if self.tls is not None:
                bound = server.add_secure_port(where, self.tls.credentials())
                self.tls.start()
            else:
                bound = server.add_insecure_port(where)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise ListenError(f"cannot bind gRPC address {self.settings.grpc_address}")
        self.grpc_port = bound
        await server.start()
        self._grpc = server
        http_check = None
        if self.settings.http_check_address:
            check_host, check_port = parse_address(self.settings.http_check_address,
                                                   "--http-check-address")
            self._http = HttpCheckListener(self.service.check_http)
            self.http_check_port = await self._http.start(
                check_host, check_port, self.settings.reuse_port,
                http_tls)
            http_check = format_address(check_host, self.http_check_port)
        if self.settings.http_address:
            self._admin = AdminServer(
                self, self.debug_explain if self.settings.enable_debug_endpoints else None)
            await self._admin.start(self.settings.http_address)
        log.info("server_started", version=__version__, grpc_address=f"{host}:{bound}",
                 http_address=self.settings.http_address or None,
                 http_check_address=http_check,
                 event_loop=current_loop_name(),
                 grpc_experiments=os.environ.get("GRPC_EXPERIMENTS"),
                 tls="mutual" if self.tls and self.tls.mutual else bool(self.tls))

    async def become_ready(self, load: bool = True) -> None:
        """Ready = policies loaded and every JWKS source tried once (good or not)."""
        if load:
            self.load_policies()
        await self._fetch_keys_for(self.store.current)
        self.ready = True
        if self.service is not None:
            self.service.ready = True
        self.metrics.ready.set(1)
        await self._set_health(SERVING)
        if self.settings.watch_interval > 0:
            self._watcher.start(self._read_fingerprint)
        log.info("server_ready")

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        """Drain: NOT_SERVING first, then refuse new calls, then let in-flight ones finish."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        if self.service is not None:
            self.service.ready = False
        await self._watcher.stop()
        self.metrics.ready.set(0)
        await self.health.enter_graceful_shutdown()
        log.info("server_draining", grace_period=self.settings.grace_period,
                 drain_delay=self.settings.drain_delay)
        if self._http is not None:
            self._http.begin_drain()
        if self.settings.drain_delay:
            await self._drain_delay()
        # Both listeners stop accepting together and share the grace period.
        stops = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(self.settings.grace_period))
        if self._http is not None:
            stops.append(self._http.stop(self.settings.grace_period))
        await asyncio.gather(*stops)
        if self._admin is not None:
            await self._admin.stop()
        await self.jwks.stop()
        if self.tls is not None:
            await self.tls.stop()
        await asyncio.to_thread(self.tracing.shutdown)  # flushes the last spans
        if self.service is not None:
            self.service.flush_log()
        log.info("server_stopped", checks_answered=self.service.answered if self.service else 0)

    async def _drain_delay(self) -> None:
        """Keep answering while health checkers (Envoy's, the kubelet's) notice
        NOT_SERVING and callers move away. The delay ends early once every
        health checker that polls over a kept connection and is due back within
        the delay has been told NOT_SERVING, and no Check has arrived for
        ``DRAIN_IDLE`` seconds since: a lull alone does not end it, because a
        proxy that has not yet seen NOT_SERVING still routes here."""
        start = time.perf_counter()
        deadline = start + self.settings.drain_delay
        while (now := time.perf_counter()) < deadline:
            await asyncio.sleep(min(DRAIN_IDLE / 2, deadline - now))
            if self.health.untold_pollers(deadline):
                continue
            last = self.service.last_arrival if self.service is not None else 0.0
            quiet_since = max(last, start, self.health.told_at or start)
            if time.perf_counter() - quiet_since >= DRAIN_IDLE:
                log.info("drain_idle", waited=round(time.perf_counter() - start, 3))
                return

    async def serve(self, install_signals: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or ``request_stop``), then drain and return."""
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal(sig))
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self.load_policies()  # a bad policy fails before any port is bound
        await self.start()
        await self.become_ready(load=False)
        await self._stop.wait()
        await self.stop()

    def _on_sighup(self) -> None:
        log.info("signal_received", signal="SIGHUP")
        tasks = [asyncio.create_task(self.reload())]
        if self.tls is not None:  # SIGHUP also rereads changed certificate files
            tasks.append(asyncio.create_task(self.tls.check()))
        for task in tasks:
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _on_signal(self, sig: signal.Signals) -> Callable[[], None]:
        def handler() -> None:
            log.info("signal_received", signal=sig.name)
            self.request_stop()

        return handler


def probe_bind(host: str, port: int, reuse_port: bool, what: str) -> None:
    """Bind and let go, so a port in use fails with the system's reason in one line
    (grpc would log its own error lines and raise a bare RuntimeError)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        if reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ListenError(f"cannot bind {what} address {format_address(host, port)}: "
                              f"{exc.strerror or exc}") from None
def policy_summary(snapshot: Snapshot, paths: tuple[str, ...]) -> dict[str, Any]:
    """What /readyz says about the policies in use; ``allow_all`` when no
    AuthorizationPolicy is loaded (Istio's rule for a workload without one: allow),
    which a mistyped ``--policy`` path would otherwise do silently."""
    authorization = snapshot.kinds.get("AuthorizationPolicy", 0)
    warnings: list[str] = []
    if not authorization:
        where = f"in {', '.join(paths)}" if paths else "(no --policy given)"
        warnings.append(f"no AuthorizationPolicy loaded {where}: every request that "
                        "passes authentication is allowed")
    return {"authorization": authorization,
            "authentication": snapshot.kinds.get("RequestAuthentication", 0),
            "allow_all": not authorization, "warnings": warnings}


def run_server(settings: Settings) -> int:
    """One server process until it stops: the exit code ``authz serve`` returns (a
    worker of ``--workers N`` runs exactly this)."""
    try:
        eventloop.run(AuthzServer(settings).serve, settings.event_loop)
    except PolicyErrors as exc:
        print(f"authz: policies rejected:\n{exc}", file=sys.stderr)
        return 2
    except TlsError as exc:
        print(f"authz: tls: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"authz: {exc}", file=sys.stderr)
        return 1
    return 0
