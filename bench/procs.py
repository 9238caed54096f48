"""The processes a benchmark run starts: pinned, logged, and measured from /proc.

Every server, Envoy and load generator of bench/run.py is a ``Proc``: started under
taskset on the CPUs it is given, its output in the work directory, its CPU time and
peak RSS read from /proc over its whole process tree (worker processes included).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpulist(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes so far (ones that are gone count nothing)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (worker processes, for one)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


class Proc:
    """A child process pinned with taskset, its output kept in a log file."""

    def __init__(self, name: str, argv: Sequence[str], cpus: Sequence[int], logdir: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.cpus = list(cpus)
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            ["taskset", "-c", cpulist(cpus), *argv], stdout=self._log,
            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT)

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        return descendants(self.pid) if self.alive() else []

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def peak_rss_mib(self) -> tuple[float, float, int]:
        """(sum, max) of VmHWM over the process tree, and how many processes."""
        values = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        values.append(int(line.split()[1]) / 1024)
        return (sum(values), max(values, default=0.0), len(values))

    def affinity(self) -> dict[int, list[int]]:
        out = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                out[pid] = sorted(os.sched_getaffinity(pid))
        return out

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def busy_seconds(cpus: Sequence[int]) -> float:
    """Busy time of these CPUs (all but idle and iowait) from /proc/stat."""
    names = {f"cpu{c}" for c in cpus}
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in names:
            values = [int(v) for v in fields[1:9]]
            total += sum(values) - values[3] - values[4]
    return total / CLK_TCK


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def wait_for(what: str, probe: Callable[[], bool], proc: Proc, limit: float = 180.0) -> None:
    deadline = time.monotonic() + limit
    while not probe():
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}:\n{proc.tail()}")
        time.sleep(0.05)


def http_status(url: str, headers: Mapping[str, str] | None = None,
                timeout: float = 2.0) -> int | None:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return None


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())
