from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from authz.policy.watch import ChangedDuringRead, PolicyWatcher, fingerprint, read_unchanged

DOC = "apiVersion: v1\nkind: X\nmetadata: {name: %s}\n"


def test_fingerprint_sees_edits_new_and_deleted_files(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(DOC % "a")
    first = fingerprint([tmp_path])
    assert fingerprint([tmp_path]) == first
    a.write_text(DOC % "a-longer")
    second = fingerprint([tmp_path])
    assert second != first
    (tmp_path / "b.yml").write_text(DOC % "b")
    third = fingerprint([tmp_path])
    assert third != second
    (tmp_path / "b.yml").unlink()
    assert fingerprint([tmp_path]) != third
    (tmp_path / "notes.txt").write_text("not a policy")
    assert fingerprint([tmp_path]) == fingerprint([tmp_path])


def test_fingerprint_sees_configmap_symlink_swap(tmp_path: Path) -> None:
    # Kubernetes: ..<ts>/ holds the files, ..data -> ..<ts>, p.yaml -> ..data/p.yaml
    old, new = tmp_path / "..2026_01", tmp_path / "..2026_02"
    old.mkdir()
    new.mkdir()
    (old / "p.yaml").write_text(DOC % "same")
    (new / "p.yaml").write_text(DOC % "same")  # same size, new inode
    (tmp_path / "..data").symlink_to(old.name)
    (tmp_path / "p.yaml").symlink_to("..data/p.yaml")
    before = fingerprint([tmp_path])
    tmp = tmp_path / "..data_tmp"
    tmp.symlink_to(new.name)
    os.replace(tmp, tmp_path / "..data")  # the atomic swap kubelet does
    assert fingerprint([tmp_path]) != before


def test_missing_path_is_a_change_not_a_crash(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(DOC % "p")
    before = fingerprint([f])
    f.unlink()
    assert fingerprint([f]) != before


async def test_watcher_fires_once_per_settled_change(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(DOC % "p")
    calls: list[int] = []
    fired = asyncio.Event()

    async def on_change() -> None:
        calls.append(1)
        fired.set()

    watcher = PolicyWatcher([tmp_path], on_change, interval=0.05, settle=0.15)
    watcher.start()
    try:
        await asyncio.sleep(0.1)
        for i in range(3):  # a burst of writes settles into one reload
            f.write_text(DOC % f"p{i}" * (i + 1))
            await asyncio.sleep(0.03)
        await asyncio.wait_for(fired.wait(), 5)
        await asyncio.sleep(0.4)
        assert calls == [1]
    finally:
        await watcher.stop()


async def test_watcher_survives_a_failing_callback(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(DOC % "p")
    calls: list[int] = []

    async def on_change() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    watcher = PolicyWatcher([f], on_change, interval=0.05, settle=0.05)
    watcher.start()
    try:
        await asyncio.sleep(0.1)
        f.write_text(DOC % "q")
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.05)
        f.write_text(DOC % "rr")
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(calls) == 2
    finally:
        await watcher.stop()


def test_a_read_during_which_the_files_change_is_discarded(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(DOC % "p")

    def read_while_written() -> str:
        text = f.read_text()
        f.write_text(DOC % "p" + DOC % "q")  # a writer still at work
        return text

    with pytest.raises(ChangedDuringRead):
        read_unchanged([tmp_path], read_while_written)

    def fail_while_written() -> str:
        f.write_text("kind: [")
        raise ValueError("half a file")

    with pytest.raises(ChangedDuringRead):  # the error of a half-read file is no answer
        read_unchanged([tmp_path], fail_while_written)
    assert read_unchanged([tmp_path], f.read_text) == ("kind: [", fingerprint([tmp_path]))


async def test_settled_waits_until_writes_stop_for_the_settle_time(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(DOC % "p")
    watcher = PolicyWatcher([tmp_path], asyncio.sleep, interval=0.05, settle=0.3)

    async def slow_writer() -> None:  # a non-atomic copy: a chunk every 0.1 s
        with f.open("w") as out:
            for i in range(6):
                out.write(DOC % f"chunk{i}")
                out.flush()
                await asyncio.sleep(0.1)

    start = time.monotonic()
    writer = asyncio.create_task(slow_writer())
    await asyncio.sleep(0.02)
    await watcher.settled()
    await writer
    waited = time.monotonic() - start
    assert waited >= 0.5 + 0.3 - 0.05, waited  # the writes, then the settle time
    assert f.read_text().count("chunk") == 6
