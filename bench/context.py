"""What every section of a benchmark run shares: the run's settings, CPUs, keys and
workloads, and what it has observed so far (pinning, event loops, failures)."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import workloads
from procs import PY, ROOT, Proc, log
from workloads import Workload

CONCURRENCY = (1, 32)
TARGET_CONCURRENCY = 32


@dataclass
class Server:
    kind: str  # ours | bare | naive
    label: str
    proc: Proc
    port: int
    admin_port: int | None = None
    http_port: int | None = None
    """Ours with ``--http-check-address``: the HTTP front door's port."""

    def stop(self) -> None:
        self.proc.stop()


def serve_flags() -> str:
    """``authz serve --help`` of this checkout (which flags it has)."""
    return subprocess.run([PY, "-m", "authz", "serve", "--help"], capture_output=True,
                          text=True, cwd=ROOT).stdout


def workers_flag_available() -> bool:
    return "--workers" in serve_flags()


def http_check_available() -> bool:
    """Whether ``authz serve`` has the HTTP front door (``--http-check-address``)."""
    return "--http-check-address" in serve_flags()


@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    server_cpus: list[int]
    load_cpu: int
    envoy_cpus: list[int]
    keys: workloads.Keys
    jwks: workloads.JwksServer
    workloads: dict[str, Workload]
    messages: dict[str, Path]
    has_workers: bool
    all_cpus: list[int]
    pinning: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started: int = 0
    cursors: dict[tuple[int, str], int] = field(default_factory=dict)
    """Where each (server port, message file) cycle continues (see loadgen_run)."""
    loops: dict[str, set[str]] = field(default_factory=dict)
    """Per kind of server, the event loops its processes said they run on (ours in
    /readyz, the references in their "listening" line): observed, not assumed."""

    has_http: bool = False
    """``authz serve --http-check-address`` exists: the HTTP rows run."""
    grpc_experiments: dict[str, set[str]] = field(default_factory=dict)
    """Per kind of server, the GRPC_EXPERIMENTS its processes said gRPC core read
    ("" for gRPC's defaults), observed like ``loops``."""

    def note_loop(self, kind: str, loop: str, grpc_experiments: str | None) -> None:
        self.loops.setdefault(kind, set()).add(loop)
        self.grpc_experiments.setdefault(kind, set()).add(grpc_experiments or "")

    @contextlib.contextmanager
    def failing(self, what: str) -> Iterator[None]:
        """A server that fails to start or dies costs its rows, not the whole run."""
        try:
            yield
        except Exception as exc:
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            detail = lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")
            self.failures.append(f"{what}: {type(exc).__name__}: {detail}")
            log(f"FAILED {what}: {exc}")

    def note_pinning(self, role: str, proc: Proc) -> None:
        entry = {"role": role, "pid": proc.pid, "affinity": proc.affinity()}
        self.pinning.append(entry)
        cpus = sorted({c for cs in entry["affinity"].values() for c in cs})
        log(f"pinned {role} (pid {proc.pid}, {len(entry['affinity'])} process(es)) to CPUs "
            f"{cpus}")
