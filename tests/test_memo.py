"""IdentityMemo: keyed by identity, never confused by a reused id, bounded.
ValueMemo: keyed by equal values, bounded the same way."""

from __future__ import annotations

import gc

from authz.memo import IdentityMemo, ValueMemo


class Owner:
    pass


def test_hits_only_the_same_object_with_the_same_extra() -> None:
    memo: IdentityMemo[str] = IdentityMemo(8)
    a, twin = Owner(), Owner()
    memo.put(a, "for a", extra=("x", 1))
    assert memo.get(a, ("x", 1)) == "for a"
    assert memo.get(a, ("x", 2)) is None
    assert memo.get(a) is None
    assert memo.get(twin, ("x", 1)) is None


def test_an_entry_keeps_its_owner_alive_so_its_id_is_never_reused() -> None:
    memo: IdentityMemo[str] = IdentityMemo(8)
    memo.put(Owner(), "first")
    gc.collect()
    # Had the owner been freed, new objects could take its id and read "first".
    strangers = [Owner() for _ in range(1000)]
    assert all(memo.get(s) is None for s in strangers)


def test_a_full_memo_starts_over() -> None:
    memo: IdentityMemo[int] = IdentityMemo(3)
    owners = [Owner() for _ in range(4)]
    for i, owner in enumerate(owners[:3]):
        memo.put(owner, i)
    assert len(memo) == 3
    memo.put(owners[3], 3)
    assert len(memo) == 1
    assert memo.get(owners[0]) is None and memo.get(owners[3]) == 3


def test_a_value_memo_hits_equal_keys_and_starts_over_when_full() -> None:
    memo: ValueMemo[tuple[str, int], str] = ValueMemo(2)
    memo.put(("a", 1), "one")
    assert memo.get(("a", 1)) == "one"  # an equal key, not the same object
    assert memo.get(("a", 2)) is None
    memo.put(("b", 1), "two")
    memo.put(("c", 1), "three")
    assert len(memo) == 1 and memo.get(("a", 1)) is None and memo.get(("c", 1)) == "three"
