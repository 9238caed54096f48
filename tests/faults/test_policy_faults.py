"""Policy rewrites of every kind under load: only valid policies ever answer."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from authz.policy.errors import PolicyErrors
from authz.policy.load import load_paths
from tests.e2e.conftest import AuthzProcess, StartAuthz, StartEnvoy
from tests.e2e.rig import EchoUpstream
from tests.faults.conftest import ROUNDS, Row
from tests.faults.load import Answer, Load

pytestmark = pytest.mark.e2e

CONVERGE_WITHIN = 3.0
"""Seconds a valid rewrite may take to answer everywhere: --watch-interval (0.5) +
--watch-settle (1) + compile and swap, with room for a loaded machine."""
VERSIONS = 8


def policy(version: int) -> str:
    """Version k allows exactly /p<k>; no version allows /never."""
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: gate
  namespace: default
spec:
  action: ALLOW
  rules:
  - to:
    - operation:
        paths: ["/p{version}"]
"""


class ConfigMapDir:
    """A directory laid out as kubelet mounts a ConfigMap: ``policy.yaml`` ->
    ``..data/policy.yaml``, ``..data`` -> ``..<n>/``."""

    def __init__(self, root: Path, text: str) -> None:
        self.root, self.n = root, 0
        self._swap(text)
        (root / "policy.yaml").symlink_to("..data/policy.yaml")

    @property
    def file(self) -> Path:
        return self.root / "policy.yaml"

    def _swap(self, text: str) -> None:
        self.n += 1
        folder = self.root / f"..{self.n}"
        folder.mkdir()
        (folder / "policy.yaml").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        os.replace(link, self.root / "..data")  # the one atomic rename kubelet does

    def swap(self, text: str) -> None:
        self._swap(text)

    def write(self, text: str) -> None:
        """In place, through the symlinks (an editor that truncates and writes)."""
        with self.file.open("w") as out:
            out.write(text)

    def replace(self, text: str) -> None:
        """Write beside and rename over (an editor that saves atomically)."""
        target = (self.root / "..data" / "policy.yaml").resolve()
        tmp = target.with_name(".policy.yaml.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)

    async def slowly(self, text: str, chunks: int = 6, pause: float = 0.15) -> None:
        """A non-atomic copy: the file grows a chunk at a time."""
        size = -(-len(text) // chunks)
        with self.file.open("w") as out:
            for i in range(0, len(text), size):
                out.write(text[i:i + size])
                out.flush()
                await asyncio.sleep(pause)


def candidates(timeline: list[tuple[float, int]], answer: Answer) -> set[int]:
    """Versions that may answer: each valid one from its write until the next valid
    write has had CONVERGE_WITHIN to take over."""
    out = set()
    for i, (written, version) in enumerate(timeline):
        until = timeline[i + 1][0] + CONVERGE_WITHIN if i + 1 < len(timeline) else float("inf")
        if written <= answer.end and answer.start <= until:
            out.add(version)
    return out


def agrees(version: int, answer: Answer) -> bool:
    return answer.status == (200 if answer.path == f"/p{version}" else 403)


def wrong_answers(timeline: list[tuple[float, int]], answers: list[Answer]) -> list[Answer]:
    """Answers no policy on disk at the time would give (allow-all, a half-read file,
    errors): the fault suite's central assertion."""
    return [a for a in answers
            if a.status not in (200, 403) or not any(
                agrees(v, a) for v in candidates(timeline, a))]


def convergence(written: float, version: int, answers: list[Answer], until: float) -> float:
    """Seconds from the write until every later answer agrees with ``version``."""
    window = [a for a in answers if a.start >= written and a.end <= until]
    assert window, "no answers after the write"
    stale = [a.end for a in window if not agrees(version, a)]
    later = [a for a in window if a.start > max(stale, default=written)]
    assert later, f"version {version} never answered"
    return max(stale, default=written) - written if stale else 0.0


async def readyz(authz: AuthzProcess) -> dict[str, object]:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{authz.admin_port}/readyz") as r:
        body: dict[str, object] = await r.json()
        return body


async def test_policy_rewrites_under_load(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    tmp_path: Path, results: list[Row],
) -> None:
    mount = ConfigMapDir(tmp_path, policy(1))
    authz = await start_authz(tmp_path)  # default --watch-interval and --watch-settle
    envoy = await start_envoy(authz.port, echo_upstream.port)
    paths = [f"/p{v}" for v in range(1, VERSIONS + 1)] + ["/never"]
    timeline: list[tuple[float, int]] = [(0.0, 1)]
    valid: list[tuple[str, float, int]] = []
    rejected: list[tuple[str, float]] = []
    half = policy(3)[: len(policy(3)) // 2]
    with pytest.raises(PolicyErrors):  # the truncated text really is broken
        (tmp_path / "half.yaml").write_text(half)
        load_paths([tmp_path / "half.yaml"])
    (tmp_path / "half.yaml").unlink()

    async def step(kind: str, version: int | None, act: object) -> None:
        began = time.monotonic()
        if asyncio.iscoroutine(act):
            await act
        if version is not None:
            timeline.append((began, version))
            valid.append((kind, began, version))
        else:
            rejected.append((kind, began))
        await asyncio.sleep(CONVERGE_WITHIN)
        if version is None:
            body = await readyz(authz)
            assert body["ready"] is True and body["last_reload_error"], (kind, body)

    async def write(fn: object, text: str) -> None:
        fn(text)  # type: ignore[operator]

    async def truncate_pause_write(text: str) -> None:
        mount.write("")
        await asyncio.sleep(0.3)
        mount.write(text)

    async with Load(envoy.port, lambda: [(p, {}, "") for p in paths]) as load:
        await asyncio.sleep(1.0)
        version = 1
        for _ in range(ROUNDS):
            await step("valid, written in place", version + 1, write(mount.write,
                                                                     policy(version + 1)))
            version += 1
            await step("broken YAML", None, write(mount.write, "kind: [unclosed\n"))
            await step("wrong schema (action: NOPE)", None,
                       write(mount.write, policy(version).replace("ALLOW", "NOPE")))
            await step("truncated (half a file)", None, write(mount.write, half))
            await step("valid, renamed over", version + 1, write(mount.replace,
                                                                 policy(version + 1)))
            version += 1
            await step("emptied (> file)", None, write(mount.write, ""))
            await step("truncate, pause 0.3 s, write", version + 1,
                       truncate_pause_write(policy(version + 1)))
            version += 1
            await step("slow non-atomic write (6 chunks, 0.9 s)", version + 1,
                       mount.slowly(policy(version + 1)))
            version += 1
            await step("ConfigMap ..data symlink swap", version + 1, write(mount.swap,
                                                                           policy(version + 1)))
            version += 1
            version = version if version < VERSIONS - 5 else 0
            if version == 0:  # start the cycle again from a known version
                await step("valid, written in place", 1, write(mount.write, policy(1)))
                version = 1
    answers = load.answers
    wrong = wrong_answers(timeline, answers)
    ends = [t for _, t, _ in valid[1:]] + [float("inf")]
    times = [convergence(t, v, answers, until)
             for (_, t, v), until in zip(valid, ends, strict=True)]
    for kind, t in rejected:
        during = [a for a in answers if t <= a.start <= t + CONVERGE_WITHIN]
        results.append(Row(f"policy: {kind}", len(during),
                           len([a for a in during if a in wrong]), None, "last good kept"))
    for (kind, t, _), seconds in zip(valid, times, strict=True):
        during = [a for a in answers if t <= a.start <= t + CONVERGE_WITHIN]
        results.append(Row(f"policy: {kind}", len(during),
                           len([a for a in during if a in wrong]), seconds))
    assert not wrong, f"{len(wrong)} of {len(answers)} answers from no valid policy: {wrong[:5]}"
    assert not [a for a in answers if a.path == "/never" and a.status != 403]
    assert max(times) < CONVERGE_WITHIN, times
