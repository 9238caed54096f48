"""Notice policy changes on disk, debounced, without inotify.

Polling stats every policy file (following symlinks), so it sees a plain edit,
a new or deleted file, and Kubernetes' ConfigMap update, which swaps the
``..data`` symlink to a new folder in one rename. A change is acted on once the
fingerprint has stayed the same for ``debounce`` seconds, so an editor's
write-rename sequence or a half-copied folder is read once, complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import structlog

from authz.policy.errors import PolicyError
from authz.policy.load import policy_files

__all__ = ["PolicyWatcher", "fingerprint"]

log = structlog.get_logger("authz.policy")

Fingerprint = frozenset[tuple[str, int, int, int]]


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


class PolicyWatcher:
    def __init__(
        self,
        paths: Iterable[str | Path],
        on_change: Callable[[], Awaitable[object]],
        interval: float = 0.5,
        debounce: float = 0.2,
    ) -> None:
        self._paths = tuple(paths)
        self._on_change = on_change
        self._interval = interval
        self._debounce = debounce
        self._task: asyncio.Task[None] | None = None

    async def _fingerprint(self) -> Fingerprint:
        return await asyncio.to_thread(fingerprint, self._paths)

    async def _run(self) -> None:
        seen = await self._fingerprint()
        while True:
            await asyncio.sleep(self._interval)
            now = await self._fingerprint()
            if now == seen:
                continue
            while True:  # settle: wait until nothing moves for `debounce` seconds
                await asyncio.sleep(self._debounce)
                later = await self._fingerprint()
                if later == now:
                    break
                now = later
            seen = now
            log.info("policy_change_detected")
            try:
                await self._on_change()
            except Exception as exc:  # the watcher must outlive any one reload
                log.error("policy_reload_crashed", error=type(exc).__name__)

    def start(self) -> None:
        if self._paths and self._task is None:
            self._task = asyncio.create_task(self._run(), name="policy-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
