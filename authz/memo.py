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

Entries are stored so that the cycle collector sees as little as possible: a
memo is a dict or two however many entries it holds, and a key made of numbers
and strings is untracked after the first collection. A tuple per entry holding
an owner would stay tracked, and a full collection walks every tracked object
with the event loop stopped: with 10,000 cached tokens, what each token adds
to that walk is the pause (``docs/design/performance.md``, garbage collector).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["IdentityMemo", "ValueMemo"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class IdentityMemo(Generic[V]):
    """``(owner, extra) -> value`` for at most ``size`` entries. ``extra`` is any
    hashable detail the value also depends on. A value of None is not memoized."""

    __slots__ = ("_owners", "_values", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: dict[tuple[int, Hashable], V] = {}
        self._owners: dict[tuple[int, Hashable], object] = {}
        """Beside the values, not in a tuple with each (module docstring)."""

    def get(self, owner: object, extra: Hashable = None) -> V | None:
        key = (id(owner), extra)
        found = self._values.get(key)
        if found is not None and self._owners[key] is owner:
            return found
        return None

    def put(self, owner: object, value: V, extra: Hashable = None) -> V:
        if len(self._values) >= self.size:
            self._values.clear()
            self._owners.clear()
        key = (id(owner), extra)
        self._values[key] = value
        self._owners[key] = owner
        return value

    def __len__(self) -> int:
        return len(self._values)


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
