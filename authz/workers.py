"""``--workers N``: N server processes share the gRPC port under one supervisor.

One grpc.aio event loop runs Python on one core at a time, so more cores need
more processes. Each worker is a complete ``AuthzServer`` (its own loop, policy
snapshot, JWKS manager, token cache, health service) bound to the same port with
``SO_REUSEPORT``; the kernel spreads new connections across them. Workers load
and reload the same files, so every one decides the same way.

The supervisor owns what must be single: signals (SIGTERM/SIGINT drain every
worker, SIGHUP reloads every worker), restarts of a worker that dies, and the
admin port, whose ``/readyz`` is ready only when every worker is and whose
``/metrics`` merges the workers' families. Workers serve their own admin app on
an abstract Unix socket (no file, so a read-only root filesystem is fine),
reachable like the loopback admin port only from the same network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from authz.admin import UNIX_PREFIX, AdminServer, unix_path
from authz.config import Settings, format_address, parse_address

__all__ = [
    "Supervisor", "Worker", "merge_metrics", "reserve_port", "settings_from_env", "worker_main",
]

log = structlog.get_logger("authz.workers")

SETTINGS_ENV = "AUTHZ_WORKER_SETTINGS"
"""How the supervisor hands a worker its settings (JSON of ``Settings``)."""
INDEX_ENV = "AUTHZ_WORKER_INDEX"
PARENT_ENV = "AUTHZ_WORKER_PARENT"

RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds before restarting a worker that keeps dying; reset once it runs a minute."""
STABLE_AFTER = 60.0
STATUS_TIMEOUT = 2.0

# Gauges do not add up like counters: how each merges across workers.
_GAUGE_MERGE: dict[str, Any] = {
    "authz_check_in_flight": sum,
    "authz_token_cache_entries": sum,
    "authz_decision_cache_entries": sum,
    "authz_ready": min,
    "authz_policy_snapshot_version": min,
    "authz_jwks_keys": min,
    "authz_jwks_key_set_age_seconds": max,
    "authz_jwks_consecutive_failures": max,
    "authz_tls_certificate_expiry_timestamp_seconds": min,
}


def merge_metrics(texts: Iterable[str]) -> list[Metric]:
    """Counters and histograms add up; gauges merge by ``_GAUGE_MERGE`` (default max)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, family)
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples.setdefault(key, []).append(sample.value)
    merged: list[Metric] = []
    for name, family in families.items():
        out = Metric(name, family.documentation, family.type, family.unit)
        combine = _GAUGE_MERGE.get(name, max) if family.type == "gauge" else sum
        for (sample_name, labels), vals in values[name].items():
            out.add_sample(sample_name, dict(labels), float(combine(vals)))
        merged.append(out)
    return merged


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


@dataclasses.dataclass
class Worker:
    index: int
    socket_path: str
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready_once: bool = False
    crashes: int = 0


def reserve_port(address: str, flag: str = "--grpc-address",
                 what: str = "gRPC") -> tuple[socket.socket, str]:
    """Bind (not listen) the gRPC (or HTTP check) address with SO_REUSEPORT: it fixes
    port 0 to a real port for every worker, fails early if another program owns the
    port, and keeps the port ours while workers restart."""
    host, port = parse_address(address, flag)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {what} address {address}: {exc.strerror}") from None
    return sock, format_address(host, sock.getsockname()[1])


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.draining = False
        self.restarts = 0
        tag = f"@authz-{os.getpid()}-{time.monotonic_ns()}"
        self._workers = [Worker(i, f"{tag}-worker-{i}") for i in range(settings.workers)]
        self._stop = asyncio.Event()
        self._failed: int | None = None
        self._ready_logged = False
        self._admin: AdminServer | None = None
        self._grpc_address = settings.grpc_address
        self._http_check_address = settings.http_check_address
        self._monitors: list[asyncio.Task[None]] = []

    # -- workers ---------------------------------------------------------------
    def _worker_settings(self, worker: Worker) -> Settings:
        return dataclasses.replace(
            self.settings, workers=1, reuse_port=True, grpc_address=self._grpc_address,
            http_check_address=self._http_check_address,
            http_address=UNIX_PREFIX + worker.socket_path)

    async def _spawn(self, worker: Worker) -> None:
        env = {**os.environ,
               SETTINGS_ENV: json.dumps(dataclasses.asdict(self._worker_settings(worker))),
               INDEX_ENV: str(worker.index), PARENT_ENV: str(os.getpid())}
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "authz.workers", env=env)
        worker.started = time.monotonic()
        log.info("worker_started", worker=worker.index, pid=worker.process.pid)

    async def _start(self, worker: Worker) -> None:
        await self._spawn(worker)
        self._monitors.append(asyncio.create_task(self._monitor(worker)))

    async def _monitor(self, worker: Worker) -> None:
        """Wait for the worker to exit; restart it unless we are stopping."""
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self.draining:
                return
            ran = time.monotonic() - worker.started
            if not worker.ready_once and not self._ready_logged:
                # Dying before the service ever came up is a configuration problem
                # (bad policies, port): restarting would only loop; stop and say so.
                log.error("worker_failed_at_start", worker=worker.index, exit_code=code)
                self._failed = code or 1
                self._stop.set()
                return
            worker.crashes = 0 if ran > STABLE_AFTER else worker.crashes + 1
            delay = RESTART_BACKOFF[min(worker.crashes, len(RESTART_BACKOFF) - 1)]
            log.error("worker_exited", worker=worker.index, pid=worker.process.pid,
                      exit_code=code, restart_in=delay)
            await asyncio.sleep(delay)
            if self.draining:
                return
            worker.ready_once = False
            await self._spawn(worker)
            self.restarts += 1

    async def _worker_get(self, worker: Worker, path: str) -> tuple[int, bytes] | None:
        if worker.process is None or worker.process.returncode is not None:
            return None
        connector = aiohttp.UnixConnector(path=unix_path(worker.socket_path))
        try:
            async with aiohttp.ClientSession(connector=connector) as session, session.get(
                f"http://worker{path}", timeout=aiohttp.ClientTimeout(total=STATUS_TIMEOUT)
            ) as r:
                return r.status, await r.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    async def debug_explain(self, body: bytes) -> tuple[int, bytes]:
        """``POST /debug/explain``: asked of the first live worker (all serve the same
        policies); 503 while none answers."""
        for worker in self._workers:
            if worker.process is None or worker.process.returncode is not None:
                continue
            connector = aiohttp.UnixConnector(path=unix_path(worker.socket_path))
            try:
                async with aiohttp.ClientSession(connector=connector) as session, session.post(
                    "http://worker/debug/explain", data=body,
                    timeout=aiohttp.ClientTimeout(total=STATUS_TIMEOUT),
                ) as r:
                    return r.status, await r.read()
            except (TimeoutError, aiohttp.ClientError, OSError):
                continue
        return 503, b'{"error": "no worker answered"}'

    async def _worker_status(self, worker: Worker) -> dict[str, Any]:
        alive = worker.process is not None and worker.process.returncode is None
        entry: dict[str, Any] = {"worker": worker.index,
                                 "pid": worker.process.pid if worker.process else None,
                                 "alive": alive, "ready": False}
        got = await self._worker_get(worker, "/readyz")
        if got is not None:
            with contextlib.suppress(ValueError):
                entry.update(json.loads(got[1]))
        if entry["ready"]:
            worker.ready_once = True
        return entry

    # -- admin -----------------------------------------------------------------
    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        workers = await asyncio.gather(*(self._worker_status(w) for w in self._workers))
        ready = not self.draining and all(w["ready"] for w in workers)
        versions: list[int] = [w["snapshot_version"] for w in workers
                               if w.get("snapshot_version") is not None]
        errors = [w.get("last_reload_error") for w in workers if w.get("last_reload_error")]
        return ready, {
            "ready": ready,
            "draining": self.draining,
            "snapshot_version": min(versions) if versions else None,
            "last_reload_error": errors[0] if errors else None,
            # Workers read the same files: the first one's summary (allow_all warnings).
            "policies": next((w["policies"] for w in workers if "policies" in w), None),
            "jwks": next((w["jwks"] for w in workers if "jwks" in w), []),
            # The workers' loop, which answers Checks (this supervisor runs asyncio's).
            "event_loop": next((w["event_loop"] for w in workers if w.get("event_loop")), None),
            "grpc_experiments": next((w["grpc_experiments"] for w in workers
                                      if "grpc_experiments" in w), None),
            # Each worker reloads the same files: the first one's view stands for all
            # here, and each worker's own is in ``workers`` (one may lag a rotation).
            "tls": next((w["tls"] for w in workers if "tls" in w), None),
            "restarts": self.restarts,
            "workers": [{k: w.get(k) for k in ("worker", "pid", "alive", "ready",
                                               "snapshot_version", "last_reload_error",
                                               "event_loop", "grpc_experiments", "tls")}
                        for w in workers],
        }

    async def metrics_text(self) -> bytes:
        got = await asyncio.gather(*(self._worker_get(w, "/metrics") for w in self._workers))
        texts = [body.decode() for status, body in filter(None, got) if status == 200]
        families = merge_metrics(texts)
        alive = sum(1 for w in self._workers
                    if w.process is not None and w.process.returncode is None)
        own = [GaugeMetricFamily("authz_workers", "Worker processes alive.", value=alive),
               CounterMetricFamily("authz_worker_restarts",
                                   "Workers restarted after exiting unexpectedly.",
                                   value=self.restarts)]
        registry = CollectorRegistry()
        registry.register(_Families([*families, *own]))
        return generate_latest(registry)

    # -- lifecycle -------------------------------------------------------------
    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        reservations: list[socket.socket] = []
        try:
            reservation, self._grpc_address = reserve_port(self.settings.grpc_address)
            reservations.append(reservation)
            if self.settings.http_check_address:
                reservation, self._http_check_address = reserve_port(
                    self.settings.http_check_address, "--http-check-address", "HTTP check")
                reservations.append(reservation)
            if self.settings.http_address:
                self._admin = AdminServer(
                    self, self.debug_explain if self.settings.enable_debug_endpoints else None)
                await self._admin.start(self.settings.http_address)
        except OSError as exc:
            for reservation in reservations:
                reservation.close()
            print(f"authz: {exc}", file=sys.stderr)
            return 1
        try:
            log.info("supervisor_started", workers=len(self._workers),
                     grpc_address=self._grpc_address,
                     http_check_address=self._http_check_address or None,
                     http_address=self.settings.http_address or None)
            waiter = asyncio.create_task(self._stop.wait())
            # The first worker alone proves the policies and the port; only then the
            # rest start, so a broken file is reported once, not once per worker.
            first, rest = self._workers[0], self._workers[1:]
            await self._start(first)
            while not self._stop.is_set() and not first.ready_once:
                await self._worker_status(first)
                await asyncio.wait({waiter}, timeout=0.1)
            for worker in rest if not self._stop.is_set() else ():
                await self._start(worker)
            while not self._stop.is_set() and not self._ready_logged:
                ready, _ = await self.readiness()
                if ready:
                    self._ready_logged = True
                    log.info("supervisor_ready", workers=len(self._workers))
                    break
                await asyncio.wait({waiter}, timeout=0.1)
            await waiter
            return await self._shutdown()
        finally:
            for reservation in reservations:
                reservation.close()

    def _on_stop(self, sig: signal.Signals) -> None:
        log.info("signal_received", signal=sig.name)
        self._stop.set()

    def _forward(self, sig: signal.Signals) -> None:
        log.info("signal_received", signal=sig.name, forwarded_to=len(self._workers))
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(sig)

    async def _shutdown(self) -> int:
        """Drain every worker at once (each runs its own drain delay and grace period)."""
        self.draining = True
        self._forward(signal.SIGTERM)
        limit = self.settings.drain_delay + self.settings.grace_period + 10.0
        codes: list[int] = []
        for worker in self._workers:
            if worker.process is None:
                continue
            try:
                codes.append(await asyncio.wait_for(worker.process.wait(), limit))
            except TimeoutError:
                worker.process.kill()
                codes.append(await worker.process.wait())
        for task in self._monitors:
            task.cancel()
        if self._admin is not None:
            await self._admin.stop()
        log.info("supervisor_stopped", restarts=self.restarts)
        if self._failed is not None:
            return self._failed
        # A worker still importing when the signal came dies of it before binding
        # anything: nothing was accepted, so that is a clean stop too.
        clean = (0, -signal.SIGTERM, -signal.SIGINT)
        return 0 if all(c in clean for c in codes) else 1


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive a supervisor that was SIGKILLed (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above: nobody will signal us
        sys.exit(1)


def settings_from_env(text: str) -> Settings:
    raw: dict[str, Any] = json.loads(text)
    names = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in raw.items() if k in names}
    return Settings(**values)


def worker_main() -> int:
    from authz.observe import configure_logging
    from authz.server import run_server

    _die_with_parent(int(os.environ.get(PARENT_ENV, os.getppid())))
    settings = settings_from_env(os.environ[SETTINGS_ENV])
    index = int(os.environ.get(INDEX_ENV, "0"))
    structlog.contextvars.bind_contextvars(worker=index)
    configure_logging(settings.log_format, settings.log_level)
    return run_server(settings)


if __name__ == "__main__":
    sys.exit(worker_main())
