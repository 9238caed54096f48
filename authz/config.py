"""Frozen settings. Every CLI flag has an ``AUTHZ_*`` environment twin."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from authz.errors import UsageError

__all__ = [
    "EVENT_LOOPS",
    "ConfigError",
    "Settings",
    "available_cpus",
    "check_event_loop",
    "format_address",
    "parse_address",
    "parse_workers",
]

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


class ConfigError(UsageError, ValueError):
    """A setting that cannot work; the message names the flag (and its ``AUTHZ_*``
    twin) and why: fix that value. Exit code 2."""


def check_event_loop(choice: str) -> str:
    if choice not in EVENT_LOOPS:
        raise ConfigError(f"--event-loop: expected {'|'.join(EVENT_LOOPS)}, got {choice!r}")
    return choice


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is out of range")
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"{what}: missing host in {text!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota
    (a pod with ``limits.cpu: 2`` on a 64-core node gets 2, not 64)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def parse_workers(text: str) -> int:
    """``auto`` (CPUs available) or a positive count."""
    if text == "auto":
        return available_cpus()
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--workers: expected a number or 'auto', got {text!r}") from None
    if value < 1:
        raise ConfigError("--workers must be >= 1")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    policy_paths: tuple[str, ...] = ()
    grpc_address: str = "0.0.0.0:9000"
    http_address: str = "127.0.0.1:9090"
    """Admin port (health, readiness, metrics). Loopback unless told otherwise."""
    http_check_address: str = ""
    """The HTTP front doors (``/envoy``, ``/nginx``, ``/traefik``); empty: off."""
    root_namespace: str = "istio-system"
    default_namespace: str = "default"
    """Scope namespace when neither context_extensions nor a SPIFFE peer name one."""
    decision_log: str = "all"
    """all | deny | sample (denies + a fraction of allows) | none."""
    decision_log_sample_rate: float = 0.01
    decision_log_headers: tuple[str, ...] = ()
    """Request headers to include in decision lines (sensitive ones are redacted)."""
    redact_headers: tuple[str, ...] = ()
    """Headers redacted in addition to the built-in sensitive list."""
    otel_endpoint: str | None = None
    """OTLP/gRPC collector for one span per Check (needs the ``otel`` extra); off if None."""
    log_format: str = "auto"
    log_level: str = "info"
    grace_period: float = 10.0
    """Seconds in-flight Checks get to finish after SIGTERM."""
    trust_domain: str = "cluster.local"
    trust_domain_aliases: tuple[str, ...] = ()
    """Istio meshConfig trustDomain / trustDomainAliases: principals match across them."""
    xff_num_trusted_hops: int = 0
    """Must equal Envoy's ``xff_num_trusted_hops``: how remote.ip is derived."""
    jwks_refresh_interval: float = 1200.0
    """Seconds between JWKS refreshes (Istio's default: 20 min); max-age can shorten it."""
    jwks_refetch_interval: float = 2.0
    """At most one unknown-kid refetch per JWKS source per this many seconds."""
    jwks_refetch_wait: float = 0.5
    """Seconds a Check whose token has an unknown kid may wait for the JWKS fetch in
    flight (and the fetch's own timeout at most); under the 1 s ext_authz timeout
    ``authz envoy-config`` gives Envoy, so the wait ends before the proxy gives up."""
    jwks_ca_file: str | None = None
    """CA bundle for HTTPS JWKS endpoints (default: the system's)."""
    watch_interval: float = 0.5
    """Seconds between checks of the policy files for changes; 0 disables watching."""
    watch_settle: float = 1.0
    """Seconds the policy files must stay unchanged before a reload reads them."""
    drain_delay: float = 5.0
    """Seconds to keep answering after SIGTERM while reporting NOT_SERVING (ends
    early once no Check has arrived for 100 ms): callers move away before the
    listener closes, as a Kubernetes rolling update expects."""
    workers: int = 1
    """Server processes sharing the gRPC port; more than one runs under a supervisor."""
    event_loop: str = "auto"
    """auto (uvloop when installed) | uvloop | asyncio: see authz/eventloop.py."""
    reuse_port: bool = False
    """Bind the gRPC (and HTTP check) port with SO_REUSEPORT: set for the processes of
    ``--workers``."""
    # -- TLS on the gRPC listener (authz/tls.py) --
    tls_cert: str | None = None
    """PEM certificate chain: set with ``tls_key``, the gRPC port speaks TLS only."""
    tls_key: str | None = None
    tls_client_ca: str | None = None
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS)."""
    # Cache sizes, per worker and per policy snapshot; 0 turns a cache off
    # (authz/memo.py CacheSizes; docs/operations.md, Sizing).
    token_cache_size: int = 10_000
    """Signature-verified tokens kept."""
    rejected_token_cache_size: int = 1_000
    """Tokens whose signature failed, kept apart (a forgery flood evicts no good token)."""
    decision_cache_size: int = 12_500
    """Decisions of repeated requests, each with its serialized response."""
    scope_cache_size: int = 4_096
    enable_debug_endpoints: bool = False
    """``POST /debug/explain`` on the admin port (off: the route does not exist)."""
    """Per scope: the rules and policies that apply; parsed scopes and peers."""

    def __post_init__(self) -> None:
        parse_address(self.grpc_address, "--grpc-address")
        if self.http_check_address:
            check = parse_address(self.http_check_address, "--http-check-address")
            for flag, other in (("--grpc-address", self.grpc_address),
                                ("--http-address", self.http_address)):
                if check[1] and other and not other.startswith("unix:") and \
                        parse_address(other, flag) == check:
                    raise ConfigError(f"--http-check-address: {self.http_check_address} is "
                                      f"also the {flag}; give each listener its own port")
        if self.http_address and not self.http_address.startswith("unix:"):
            parse_address(self.http_address, "--http-address")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError(f"--log-format: expected json|console|auto, got {self.log_format!r}")
        if self.grace_period < 0:
            raise ConfigError("--grace-period must be >= 0")
        if self.xff_num_trusted_hops < 0:
            raise ConfigError("--xff-num-trusted-hops must be >= 0")
        if self.decision_log not in ("all", "deny", "sample", "none"):
            raise ConfigError("--decision-log: expected all|deny|sample|none")
        if not 0 <= self.decision_log_sample_rate <= 1:
            raise ConfigError("--decision-log-sample-rate must be within [0, 1]")
        if self.jwks_refresh_interval < 1:
            raise ConfigError("--jwks-refresh-interval must be >= 1 (seconds)")
        if self.jwks_refetch_interval < 0:
            raise ConfigError("--jwks-refetch-interval must be >= 0")
        if not 0 <= self.jwks_refetch_wait <= 10:
            raise ConfigError("--jwks-refetch-wait must be within [0, 10] (seconds)")
        if self.watch_interval < 0:
            raise ConfigError("--watch-interval must be >= 0")
        if self.watch_settle < 0:
            raise ConfigError("--watch-settle must be >= 0")
        if self.workers < 1:
            raise ConfigError("--workers must be >= 1")
        if self.workers > 1 and not sys.platform.startswith("linux"):
            raise ConfigError("--workers > 1 needs Linux (SO_REUSEPORT load balancing)")
        check_event_loop(self.event_loop)
        if self.drain_delay < 0:
            raise ConfigError("--drain-delay must be >= 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
        for flag in ("token", "rejected_token", "decision", "scope"):
            if getattr(self, f"{flag}_cache_size") < 0:
                raise ConfigError(f"--{flag.replace('_', '-')}-cache-size must be >= 0 "
                                  "(0 turns the cache off)")
