"""The lock-free Check metrics print exactly what prometheus_client's own would."""

from __future__ import annotations

import json
import sys

import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from authz.observe import LocalCounter, LocalHistogram, configure_logging

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def test_local_histogram_matches_prometheus_client_on_every_boundary() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    local = LocalHistogram("h_seconds", "help", BUCKETS, registry=ours)
    reference = Histogram("h_seconds", "help", buckets=BUCKETS, registry=theirs)
    values = [0.0, 0.00005, *BUCKETS, *(b * 1.001 for b in BUCKETS), 3.0]
    for v in values:
        local.observe(v)
        reference.observe(v)
    assert generate_latest(ours) == generate_latest(theirs)


def test_local_counter_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    local = LocalCounter("c", "help", ("a", "b"), registry=ours)
    reference = Counter("c", "help", ["a", "b"], registry=theirs)
    for labels, n in ((("x", "1"), 3), (("y", "2"), 1), (("x", "1"), 2)):
        local.labels(*labels).inc(n)
        reference.labels(*labels).inc(n)
    text = generate_latest(ours)
    assert b'c_total{a="x",b="1"} 5.0' in text
    assert [ln for ln in text.splitlines() if not ln.startswith(b"c_created")] == [
        ln for ln in generate_latest(theirs).splitlines() if not ln.startswith(b"c_created")]


def test_local_counter_refuses_wrong_label_count() -> None:
    counter = LocalCounter("c", "help", ("a", "b"), registry=CollectorRegistry())
    with pytest.raises(ValueError, match=r"c takes labels \('a', 'b'\)"):
        counter.labels("only-one")


class _Writes:
    """A stderr that keeps each write call apart."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_each_log_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers share stderr: a line written in two parts (text, then newline) can be
    split by another worker's line, and neither is JSON any more."""
    writes = _Writes()
    monkeypatch.setattr(sys, "stderr", writes)
    configure_logging("json", "info")
    structlog.get_logger("test").info("server_stopped", checks_answered=3)
    assert len(writes.calls) == 1, writes.calls
    line = writes.calls[0]
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line)["event"] == "server_stopped"
