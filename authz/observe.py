"""Logging and metrics setup: one place that decides formats and metric names."""

from __future__ import annotations

import bisect
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from structlog.typing import Processor

if TYPE_CHECKING:
    from authz.authn.jwks import JwksManager

__all__ = [
    "JSON_PROCESSORS",
    "LOG_LEVELS",
    "SHARED_PROCESSORS",
    "TRANSPORTS",
    "CacheCollector",
    "JwksCollector",
    "LocalCounter",
    "LocalHistogram",
    "Lookups",
    "Metrics",
    "configure_logging",
    "resolved_format",
]

# The *_created series double every family for no alerting value.
disable_created_metrics()  # type: ignore[no-untyped-call]

LOG_LEVELS = ("debug", "info", "warning", "error")


SHARED_PROCESSORS: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,  # e.g. the worker index
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
)
"""What every line carries, before a renderer turns it into text."""

JSON_PROCESSORS: list[Processor] = [*SHARED_PROCESSORS, structlog.processors.JSONRenderer()]
"""The one JSON pipeline: ``--log-format json`` lines and the batched decision lines
(``decision_log.JsonLineBatcher``) both go through it, so every line has one shape."""


def resolved_format(fmt: str) -> str:
    """``auto`` -> console on a terminal, else json."""
    if fmt == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return fmt


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """JSON lines in production, readable console output in a terminal.

    ``auto`` picks console when stderr is a TTY. Everything goes to stderr so
    stdout stays free for commands that print results.
    """
    fmt = resolved_format(fmt)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=JSON_PROCESSORS if fmt == "json" else [
            *SHARED_PROCESSORS, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (print() makes two): --workers share stderr, and a line
        # written in two parts can interleave with another worker's into bad JSON.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class JwksCollector(Collector):
    """JWKS state read at scrape time from the manager (no work on the request path).

    Label cardinality is bounded by the configured JWKS sources.
    """

    def __init__(self, manager: JwksManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        fetches = CounterMetricFamily(
            "authz_jwks_fetches", "JWKS fetch attempts by source and outcome.",
            labels=["source", "outcome"])
        keys = GaugeMetricFamily(
            "authz_jwks_keys", "Usable keys in the set in use, by source.", labels=["source"])
        age = GaugeMetricFamily(
            "authz_jwks_key_set_age_seconds",
            "Seconds since the key set in use was fetched; absent before the first success.",
            labels=["source"])
        failing = GaugeMetricFamily(
            "authz_jwks_consecutive_failures",
            "Failed fetches since the last success, by source.", labels=["source"])
        waits = CounterMetricFamily(
            "authz_jwks_refetch_waits",
            "Checks that waited for a key-set fetch (a token with an unknown kid), by "
            "source and how the wait ended.", labels=["source", "outcome"])
        now = self._manager.clock()
        for status in self._manager.status():
            for outcome, count in status.fetches.items():
                fetches.add_metric([status.source, outcome], count)
            for outcome, count in status.waits.items():
                waits.add_metric([status.source, outcome], count)
            keys.add_metric([status.source], status.keys)
            failing.add_metric([status.source], status.consecutive_failures)
            if status.keys_updated is not None:
                age.add_metric([status.source], now - status.keys_updated)
        yield from (fetches, keys, age, failing, waits)


class Lookups(Protocol):
    """A cache that counts its lookups (one per policy snapshot)."""

    hits: int
    misses: int

    def __len__(self) -> int: ...


class CacheCollector(Collector):
    """One cache's lookups, cumulative across policy reloads, and its size now.

    ``current`` returns the current snapshot's cache; ``retire`` keeps the counts of
    a replaced snapshot's cache.
    """

    def __init__(self, name: str, what: str, current: Callable[[], Lookups]) -> None:
        self._name = name
        self._what = what
        self._current = current
        self._retired_hits = self._retired_misses = 0

    def retire(self, cache: Lookups) -> None:
        self._retired_hits += cache.hits
        self._retired_misses += cache.misses

    def collect(self) -> Iterator[Metric]:
        cache = self._current()
        family = CounterMetricFamily(
            f"authz_{self._name}_lookups", f"{self._what} lookups by result.",
            labels=["result"])
        family.add_metric(["hit"], self._retired_hits + cache.hits)
        family.add_metric(["miss"], self._retired_misses + cache.misses)
        size = GaugeMetricFamily(f"authz_{self._name}_entries", f"{self._what} entries now.")
        size.add_metric([], len(cache))
        yield from (family, size)


class _Tally:
    """One labelled count of a ``LocalCounter``."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LocalCounter(Collector):
    """A counter for the ``Check`` path: a plain float per label set, no lock.

    prometheus_client's counters take a lock per increment, for threads this
    server does not have on its request path: every ``Check`` runs on the event
    loop thread, and so does the admin server that collects. Same families,
    names and labels as a ``prometheus_client.Counter``.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._children: dict[tuple[str, ...], _Tally] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Tally:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _Tally()
        return child

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


TRANSPORTS = ("grpc", "http")
"""The ``transport`` label's values: the gRPC ``Check`` and the HTTP front doors."""


class _Buckets:
    """One labelled series of a ``LocalHistogram``."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, Prometheus's "le" bucket.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class LocalHistogram(Collector):
    """A histogram for the ``Check`` path: one C bisect and two additions per
    observation, no lock (see ``LocalCounter``). With ``labelnames``, ``labels()``
    gives each label set's series; without, ``observe`` is the one series."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.bounds = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], _Buckets] = {}
        if not labelnames:
            self._series[()] = _Buckets(self.bounds)
        registry.register(self)

    def labels(self, *values: str) -> _Buckets:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Buckets(self.bounds)
        return series

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in list(self._series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(_le, self.bounds), "+Inf"), series.counts,
                                    strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            family.add_metric(list(values), buckets, sum_value=series.sum)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


def _le(bound: float) -> str:
    return repr(float(bound))  # prometheus_client's formatting of "le" labels


class Metrics:
    """Prometheus families. A registry per server keeps tests independent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.checks = LocalCounter(
            "authz_check_requests",
            "Check calls answered, by decision, HTTP status, reason and transport "
            "(grpc, or http for the HTTP front doors).",
            ("decision", "status", "reason", "transport"),
            registry=self.registry,
        )
        self.jwt_results = LocalCounter(
            "authz_jwt_results",
            "Requests that carried a JWT, by outcome; issuer only for verified tokens "
            "(a rejected token's issuer is attacker-chosen and never becomes a label).",
            ("issuer", "outcome"),
            registry=self.registry,
        )
        self.check_errors = Counter(
            "authz_check_errors",
            "Check calls answered with an error rather than a decision, by reason and "
            "transport: internal (gRPC INTERNAL or HTTP 500, a bug) or bad_request "
            "(gRPC INVALID_ARGUMENT: bytes that are not a CheckRequest; HTTP: a check "
            "request on no front door's path).",
            ("reason", "transport"),
            registry=self.registry,
        )
        for reason in ("internal", "bad_request"):  # exported at 0 from the start
            for transport in TRANSPORTS:
                self.check_errors.labels(reason, transport)
        self.check_latency = LocalHistogram(
            "authz_check_duration_seconds",
            "Time to decide one Check, from request to response, by transport.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=self.registry,
            labelnames=("transport",),
        )
        self.in_flight = Gauge(
            "authz_check_in_flight", "Check calls being answered now.", registry=self.registry
        )
        self.ready = Gauge(
            "authz_ready", "1 when the server reports SERVING.", registry=self.registry
        )
        self.reloads = Counter(
            "authz_policy_reloads",
            "Policy reloads by result; a failed reload keeps the last good snapshot.",
            ["result"],
            registry=self.registry,
        )
        self.policies = Gauge(
            "authz_policies_loaded",
            "Policies in the snapshot in use, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.snapshot_version = Gauge(
            "authz_policy_snapshot_version",
            "Version of the policy snapshot in use.",
            registry=self.registry,
        )

    def watch_jwks(self, manager: JwksManager) -> None:
        self.registry.register(JwksCollector(manager))

    def watch_cache(self, name: str, what: str, current: Callable[[], Lookups]
                    ) -> CacheCollector:
        collector = CacheCollector(name, what, current)
        self.registry.register(collector)
        return collector
