"""Fixtures every test shares."""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import structlog
import structlog.contextvars

from authz.decision import Decision
from authz.pipeline.decision_cache import KEYED_FIELDS
from authz.pipeline.snapshot import Snapshot
from authz.request.view import RequestView
from tests.shared_data import REPOSITORY


@pytest.fixture(scope="session", autouse=True)
def scratch_under_pytest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Process logs, Envoy bootstraps and demo directories go under pytest's own
    temporary directory instead of piling up in /tmp: pytest keeps the last three
    runs (a failed run's logs included) and removes older ones. ``TMPDIR`` carries
    it to the processes tests start."""
    scratch = str(tmp_path_factory.mktemp("scratch", numbered=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", scratch)
        patch.setenv("AUTHZ_DRAIN_DELAY", "0")  # servers tests start stop at once
        patch.setattr(tempfile, "tempdir", scratch)
        yield


@pytest.fixture(scope="session", autouse=True)
def repository_on_pythonpath() -> Iterator[None]:
    """Processes tests start (``python -m authz``, bench scripts, ``python -c`` probes)
    import this checkout's ``authz`` and ``tests``, whatever their working directory and
    whichever checkout the virtual environment's editable install points at."""
    paths = [str(REPOSITORY), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))
        yield


@pytest.fixture(autouse=True)
def logging_configuration_as_it_was() -> Iterator[None]:
    """A test that runs a command in process (``serve_command``, ``main``) configures
    structlog for the whole process: a level filter and cached loggers; a worker binds
    context variables (``worker=N``) that every later log line would carry. Put both
    back, so that a later test's ``capture_logs`` still sees info lines, and only its
    own context, whatever order the tests run in."""
    saved = structlog.get_config()
    context = structlog.contextvars.get_contextvars()
    yield
    if structlog.get_config() != saved:
        structlog.reset_defaults()
        structlog.configure(**saved)
    if structlog.contextvars.get_contextvars() != context:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**context)


@pytest.fixture(autouse=True)
def heap_unfrozen_as_it_was() -> Iterator[None]:
    """Serving in process freezes the heap (``authz.heap.settle``, ``gc.freeze``): every
    object alive then, the test's included, would stay out of the cycle collector for
    the rest of the session and skew later tests that count collections or memory.
    Unfreeze what the test froze (``gc.unfreeze`` moves everything back; what was
    frozen before the test is frozen again)."""
    before = gc.get_freeze_count()
    yield
    if gc.get_freeze_count() != before:
        gc.unfreeze()
        if before:
            gc.freeze()


@pytest.fixture(autouse=True)
def environment_as_it_was() -> Iterator[None]:
    """``os.environ`` after the test as before it: a test (or code it runs in process,
    such as a worker reading ``AUTHZ_*``) that sets a variable without ``monkeypatch``
    would otherwise change what every later test and the processes they start see."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


# What ``request_key`` puts in a decision-cache key (``KEYED_FIELDS``, whose guard and
# tests are in tests/pipeline/test_decision_cache_key.py), besides the headers its
# ``Inputs`` name. A decision that reads anything else could be served to a request that
# differs in it: the fixture below fails any test whose decisions do.
KEYED_VIEW_FIELDS = KEYED_FIELDS | {
    "original_path",  # path and query, both keyed
    "source", "destination",  # the peers themselves: their fields are watched one by one
}


class _ReadHeaders(dict[str, str]):
    """Headers that remember every name a decision looks up."""

    def __init__(self, headers: Mapping[str, str], read: set[str]) -> None:
        super().__init__(headers)
        self.read = read

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(f"headers[{name}]")
        return super().get(name, default)

    def __getitem__(self, name: str) -> str:
        self.read.add(f"headers[{name}]")
        return super().__getitem__(name)

    def __contains__(self, name: object) -> bool:
        self.read.add(f"headers[{name}]")
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        self.read.add("headers (all of them)")
        return super().__iter__()

    def keys(self) -> Any:
        self.read.add("headers (all of them)")
        return super().keys()

    def items(self) -> Any:
        self.read.add("headers (all of them)")
        return super().items()

    def values(self) -> Any:
        self.read.add("headers (all of them)")
        return super().values()


class _Watched:
    """A view (or one of its peers) that remembers every attribute a decision reads."""

    def __init__(self, target: object, prefix: str, read: set[str]) -> None:
        self._target, self._prefix, self._read = target, prefix, read

    def __getattr__(self, name: str) -> Any:
        self._read.add(self._prefix + name)
        value = getattr(self._target, name)
        if name in ("source", "destination"):
            return _Watched(value, f"{name}.", self._read)
        if name == "headers":
            return _ReadHeaders(value, self._read)
        return value


@pytest.fixture(autouse=True)
def decisions_read_only_what_their_cache_key_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    """Every decision any test makes through a snapshot reads only what its
    decision-cache key holds (``authz/pipeline/decision_cache.py``)."""
    original = Snapshot.decide
    problems: list[str] = []

    def decide(self: Snapshot, view: RequestView, now: float) -> tuple[Decision, float]:
        read: set[str] = set()
        result = original(self, _Watched(view, "", read), now)  # type: ignore[arg-type]
        inputs = self.inputs.get(view.scope.key)
        named = set() if inputs is None else {
            f"headers[{n}]" for n in inputs.headers}
        unkeyed = read - KEYED_VIEW_FIELDS - named
        if unkeyed:
            problems.append(f"a decision in scope {view.scope} read {sorted(unkeyed)}, "
                            "which its decision-cache key does not hold")
        return result

    monkeypatch.setattr(Snapshot, "decide", decide)
    yield
    assert not problems, "\n".join(problems)
