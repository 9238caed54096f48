"""Bounded memos, and the sizes a user sets for them.

Every cache on the request path is one of these, owned by one policy snapshot
(nothing process-global), so a reload starts empty and frees the old entries with
the old snapshot. Each is bounded by a size the user sets (``CacheSizes``; 0 turns
it off) and counts its hits and misses for ``/metrics``.

A full ``Memo`` starts over rather than evict one by one (unless ``lru``): the
bound is the memory promise, and the next requests refill the hot entries.
``IdentityMemo`` keys by an object's identity, for values derived from objects
that are costly or impossible to hash (a ``Decision`` holding its claims): an
entry holds its owner, so the owner cannot be collected and its id reused while
the entry exists.

Entries are stored so that the cycle collector sees as little as possible: a memo
is a dict or two however many entries it holds, and a key made of numbers and
strings is untracked after the first collection. A tuple per entry holding an
owner would stay tracked, and a full collection walks every tracked object with
the event loop stopped (``docs/design/performance.md``, garbage collector).

Concurrency: none. A memo is read and written by the one event-loop thread of its
worker process (``authz.pipeline``), so it takes no lock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, ParamSpec, TypeVar

__all__ = ["CacheSizes", "IdentityMemo", "Memo", "cached"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class CacheSizes:
    """Entries each cache keeps at most; 0 turns one off. ``authz serve`` flags
    ``--token-cache-size`` and friends set them (``docs/operations.md``, Sizing)."""

    tokens: int = 10_000
    """Signature-verified tokens (``authn/cache.py``)."""
    rejected_tokens: int = 1_000
    """Tokens whose signature failed, kept apart so forgeries cannot evict good ones."""
    decisions: int = 12_500
    """Decisions of repeated requests and their serialized responses: a quarter more
    than the tokens, so a full token cache never makes these start over on each pass."""
    scopes: int = 4_096
    """Per scope: the rules and policies that apply, the headers decisions read; and
    the peers and scopes parsed from requests."""

    def __post_init__(self) -> None:
        for name in ("tokens", "rejected_tokens", "decisions", "scopes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} cache size must be >= 0")


def cached(function: Callable[P, R], size: int) -> Callable[P, R]:
    """``function`` memoized for at most ``size`` distinct arguments, least recently
    used evicted; itself when ``size`` is 0. For a pure function of hashable
    arguments called on every request (a view's peers and scope): ``functools``'
    C implementation costs ~6k fewer instructions per view than three ``Memo``
    lookups in Python. The caller owns the result (a snapshot), so it is freed with
    it. A call that raises is not remembered."""
    if size <= 0:
        return function
    return functools.lru_cache(maxsize=size)(function)  # type: ignore[return-value]


class Memo(Generic[K, V]):
    """``key -> value`` for at most ``size`` hashable keys; ``size`` 0 keeps nothing.
    A value of None is not memoized (``get`` returns None for "not here")."""

    __slots__ = ("_entries", "hits", "lru", "misses", "size")

    def __init__(self, size: int, *, lru: bool = False) -> None:
        self.size = size
        self.lru = lru
        """Evict the least recently used entry when full, instead of starting over."""
        self._entries: dict[K, V] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        if self.lru:  # a dict keeps insertion order: re-insert to mark it recent
            del self._entries[key]
            self._entries[key] = found
        self.hits += 1
        return found

    def put(self, key: K, value: V) -> V:
        if self.size <= 0:
            return value
        entries = self._entries
        if len(entries) >= self.size and key not in entries:
            if self.lru:
                del entries[next(iter(entries))]
            else:
                entries.clear()
        entries[key] = value
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class IdentityMemo(Generic[V]):
    """``(owner, extra) -> value`` by the owner's identity, for at most ``size``
    entries; ``extra`` is any hashable detail the value also depends on. A full memo
    starts over; ``size`` 0 keeps nothing."""

    __slots__ = ("_owners", "_values", "hits", "misses", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: dict[tuple[int, Hashable], V] = {}
        self._owners: dict[tuple[int, Hashable], object] = {}
        """Beside the values, not in a tuple with each (module docstring)."""
        self.hits = 0
        self.misses = 0

    def get(self, owner: object, extra: Hashable = None) -> V | None:
        key = (id(owner), extra)
        found = self._values.get(key)
        if found is not None and self._owners[key] is owner:
            self.hits += 1
            return found
        self.misses += 1
        return None

    def put(self, owner: object, value: V, extra: Hashable = None) -> V:
        if self.size <= 0:
            return value
        if len(self._values) >= self.size:
            self._values.clear()
            self._owners.clear()
        key = (id(owner), extra)
        self._values[key] = value
        self._owners[key] = owner
        return value

    def clear(self) -> None:
        self._values.clear()
        self._owners.clear()

    def __len__(self) -> int:
        return len(self._values)
