"""Notice policy changes on disk, settled, without inotify.

Polling stats every policy file (following symlinks), so it sees a plain edit,
a new or deleted file, and Kubernetes' ConfigMap update, which swaps the
``..data`` symlink to a new folder in one rename. A change is acted on once the
fingerprint has stayed the same for ``settle`` seconds, so an editor's
write-rename sequence, a slow copy or a half-copied folder is read once,
complete. ``read_unchanged`` then rejects a read during which the files moved
(the caller retries), so a reload never compiles a file caught mid-write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

import structlog

from authz.errors import AuthzError
from authz.policy.errors import PolicyError
from authz.policy.load import policy_files

__all__ = ["ChangedDuringRead", "Fingerprint", "PolicyWatcher", "fingerprint", "read_unchanged"]

log = structlog.get_logger("authz.policy")

Fingerprint = frozenset[tuple[str, int, int, int]]
T = TypeVar("T")

DEFAULT_SETTLE = 1.0
"""Seconds the files must stay unchanged before a reload reads them."""


class ChangedDuringRead(AuthzError):
    """The policy files changed while they were being read: the result is discarded
    and the read retried. Seen by a user only when a writer keeps changing the files:
    write them atomically (rename into place) or raise ``--watch-settle``."""


def fingerprint(paths: Iterable[str | Path]) -> Fingerprint:
    """What the policy set looks like on disk: (path, inode, size, mtime) per file."""
    entries: set[tuple[str, int, int, int]] = set()
    paths = list(paths)
    try:
        files = policy_files(paths)
    except PolicyError:
        files = []  # a path vanished: the reload will report it
    for file in files:
        try:
            st = file.stat()
        except OSError:
            continue
        entries.add((str(file), st.st_ino, st.st_size, st.st_mtime_ns))
    for raw in paths:  # directories themselves: catches the ..data symlink swap
        path = Path(raw)
        try:
            st = path.stat()
            target = os.path.realpath(path / "..data") if path.is_dir() else ""
        except OSError:
            entries.add((str(path), -1, -1, -1))
            continue
        if path.is_dir():
            entries.add((f"{path}/..data->{target}", st.st_ino, 0, 0))
    return frozenset(entries)


def read_unchanged(paths: Iterable[str | Path], read: Callable[[], T]) -> tuple[T, Fingerprint]:
    """``read()`` and the fingerprint of what it read, unless the files changed while
    it ran (inode, size, mtime, the ``..data`` link): then ``ChangedDuringRead``,
    whatever ``read`` returned or raised, since a file caught mid-write can parse as
    something never written."""
    paths = tuple(paths)
    before = fingerprint(paths)
    try:
        result = read()
    except Exception:
        if fingerprint(paths) != before:
            raise ChangedDuringRead from None
        raise
    if fingerprint(paths) != before:
        raise ChangedDuringRead
    return result, before


class PolicyWatcher:
    def __init__(
        self,
        paths: Iterable[str | Path],
        on_change: Callable[[], Awaitable[object]],
        interval: float = 0.5,
        settle: float = DEFAULT_SETTLE,
    ) -> None:
        self._paths = tuple(paths)
        self._on_change = on_change
        self._interval = interval
        self._settle = settle
        self._task: asyncio.Task[None] | None = None

    async def _fingerprint(self) -> Fingerprint:
        return await asyncio.to_thread(fingerprint, self._paths)

    async def _run(self, baseline: Fingerprint | None) -> None:
        seen = await self._fingerprint() if baseline is None else baseline
        while True:
            await asyncio.sleep(self._interval)
            now = await self._fingerprint()
            if now == seen:
                continue
            seen = await self.settled(now)
            log.info("policy_change_detected")
            try:
                await self._on_change()
            except Exception as exc:  # the watcher must outlive any one reload
                log.error("policy_reload_crashed", error=type(exc).__name__)

    async def settled(self, now: Fingerprint | None = None) -> Fingerprint:
        """Once the files have not changed for ``settle`` seconds: how they look."""
        if now is None:
            now = await self._fingerprint()
        step = max(0.01, min(0.1, self._settle / 4))
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < self._settle:
            await asyncio.sleep(step)
            later = await self._fingerprint()
            if later != now:
                now, quiet_since = later, time.monotonic()
        return now

    def start(self, baseline: Fingerprint | None = None) -> None:
        """Watch for changes from ``baseline`` (what the last load read), so a change
        made between that load and this call is not missed."""
        if self._paths and self._task is None:
            self._task = asyncio.create_task(self._run(baseline), name="policy-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
