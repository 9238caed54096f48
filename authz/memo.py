"""Bounded memos: by object identity, and by value.

The request path derives the same values again and again from objects that are
themselves shared: a parsed token the token cache hands out, the authn outcome
memoized for it, the ``Decision`` built from that outcome, a rule of the
snapshot. Hashing such objects would cost more than the memo saves (and some
are not hashable), so they are keyed by ``id``. An entry holds its owner, so
the owner cannot be collected and its id reused by another object while the
entry exists; ``get`` checks identity all the same. A full memo starts over
rather than evict one by one: the bound is the memory promise, and the next
requests refill the hot entries.

Values that are cheap to hash and repeat by content (a scope's key, the fields of
an RBAC result, an authentication failure) go in a ``ValueMemo``, with the same
bound and the same starting over.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class IdentityMemo(Generic[V]):
    """``(owner, extra) -> value`` for at most ``size`` entries. ``extra`` is any
    hashable detail the value also depends on. A value of None is not memoized."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[tuple[int, Hashable], tuple[object, V]] = {}

    def get(self, owner: object, extra: Hashable = None) -> V | None:
        found = self._entries.get((id(owner), extra))
        if found is not None and found[0] is owner:
            return found[1]
        return None

    def put(self, owner: object, value: V, extra: Hashable = None) -> V:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[(id(owner), extra)] = (owner, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)


class ValueMemo(Generic[K, V]):
    """``key -> value`` for at most ``size`` hashable keys."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> V:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = value
        return value

    def __len__(self) -> int:
        return len(self._entries)
