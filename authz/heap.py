"""Keep CPython's cycle collector from scanning what never becomes cyclic garbage.

A full collection walks every tracked object and holds the GIL while it does,
so the event loop stops for the whole walk. A compiled snapshot is most of the
heap (10,010 policies are ~520,000 tracked objects, a full collection ~270 ms
on the benchmark machine) and is immutable and acyclic: dropping a snapshot
frees it by reference counting alone (tests/test_heap.py checks that no cycle
is left to collect). Freezing the heap once a snapshot is installed moves it
out of every later collection, which then walks only what requests and caches
made since.

Objects frozen here are still freed when their last reference goes; only a
reference cycle that was alive at a freeze and dies later is never collected.
A freeze happens once per load or reload, so that is bounded by what was in
flight at a reload.
"""

from __future__ import annotations

import gc

__all__ = ["settle"]


def settle() -> None:
    """Freeze everything alive now out of future collections (``gc.freeze``)."""
    gc.freeze()
