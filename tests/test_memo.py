"""Memo: keyed by equal values, bounded, off at size 0, LRU on request, counted.
IdentityMemo: keyed by identity, never confused by a reused id, bounded."""

from __future__ import annotations

import gc

import pytest

from authz.memo import CacheSizes, IdentityMemo, Memo


class Owner:
    pass


def test_hits_only_the_same_object() -> None:
    memo: IdentityMemo[str] = IdentityMemo(8)
    a, twin = Owner(), Owner()
    memo.put(a, "for a")
    assert memo.get(a) == "for a"
    assert memo.get(twin) is None
    assert (memo.hits, memo.misses) == (1, 1)


def test_an_entry_keeps_its_owner_alive_so_its_id_is_never_reused() -> None:
    memo: IdentityMemo[str] = IdentityMemo(8)
    memo.put(Owner(), "first")
    gc.collect()
    # Had the owner been freed, new objects could take its id and read "first".
    strangers = [Owner() for _ in range(1000)]
    assert all(memo.get(s) is None for s in strangers)


def test_a_full_identity_memo_starts_over() -> None:
    memo: IdentityMemo[int] = IdentityMemo(3)
    owners = [Owner() for _ in range(4)]
    for i, owner in enumerate(owners[:3]):
        memo.put(owner, i)
    assert len(memo) == 3
    memo.put(owners[3], 3)
    assert len(memo) == 1
    assert memo.get(owners[0]) is None and memo.get(owners[3]) == 3


def test_a_memo_hits_equal_keys_and_starts_over_when_full() -> None:
    memo: Memo[tuple[str, int], str] = Memo(2)
    memo.put(("a", 1), "one")
    assert memo.get(("a", 1)) == "one"  # an equal key, not the same object
    assert memo.get(("a", 2)) is None
    assert (memo.hits, memo.misses) == (1, 1)
    memo.put(("b", 1), "two")
    memo.put(("b", 1), "two again")  # replacing an entry is not growing
    assert len(memo) == 2
    memo.put(("c", 1), "three")
    assert len(memo) == 1 and memo.get(("a", 1)) is None and memo.get(("c", 1)) == "three"


def test_an_lru_memo_evicts_the_least_recently_used() -> None:
    memo: Memo[str, int] = Memo(2, lru=True)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "b" is now the least recently used
    memo.put("c", 3)
    assert memo.get("b") is None and memo.get("a") == 1 and memo.get("c") == 3


def test_size_zero_keeps_nothing() -> None:
    memo: Memo[str, int] = Memo(0)
    assert memo.put("a", 1) == 1 and memo.get("a") is None and len(memo) == 0
    identity: IdentityMemo[int] = IdentityMemo(0)
    owner = Owner()
    assert identity.put(owner, 1) == 1 and identity.get(owner) is None


def test_cache_sizes_refuse_negative_sizes() -> None:
    assert CacheSizes(tokens=0).tokens == 0
    with pytest.raises(ValueError, match="tokens cache size"):
        CacheSizes(tokens=-1)


def test_cached_remembers_up_to_size_and_size_zero_is_the_function_itself() -> None:
    from authz.memo import cached

    calls: list[int] = []

    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert cached(double, 0) is double
    memoized = cached(double, 2)
    assert [memoized(1), memoized(1), memoized(2), memoized(3), memoized(1)] == [2, 2, 4, 6, 2]
    assert calls == [1, 2, 3, 1]  # 1 was evicted by 3, the least recently used
