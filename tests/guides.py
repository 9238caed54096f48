"""Run a guide in docs/ as a reader would: write its files, run its `$ ` commands.

A guide is Markdown with these conventions (shared with docs/walkthrough.md):

- `<!-- file: NAME -->` before a fenced block: write the block to NAME (a later
  block with the same NAME is an edit of that file);
- `<!-- excerpt of: NAME -->` before a YAML block: NAME (written by an earlier
  command) must contain this YAML (mappings by subset, lists by element);
- a `console` block: lines starting with `$ ` are commands, the lines after each
  one its expected output (stdout and stderr together). A line `...` stands for
  any number of lines, `...` inside a line for any text. A trailing `  # exit N`
  says the command exits with N (else 0).

Commands run with bash in one directory. `cmd &` starts a background job (job
numbers count from 1 in start order, as in an interactive shell); `kill %N ...`
sends SIGTERM to those jobs and `wait` waits for every job, so the shell's job
control works across the separate bash processes. `Session.close()` stops every
job that is still running, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BLOCK = re.compile(r"(?:<!-- (file|excerpt of): (\S+) -->\n)?```(\w*)\n(.*?)```", re.S)


@dataclass
class Step:
    kind: str  # "file", "excerpt" or "run"
    text: str  # file body, excerpt YAML, or the command
    name: str = ""  # file name for "file"/"excerpt"
    expected: list[str] = field(default_factory=list)  # expected output lines for "run"
    exit_code: int = 0


INPROCESS = re.compile(r"authz [^|;&<>]*(?: > [\w./-]+)?")
"""An `authz` command Session(inprocess=True) may run in this process: no shell syntax
but words and an optional `> FILE`."""


def parse(markdown: str) -> list[Step]:
    steps: list[Step] = []
    for block in BLOCK.finditer(markdown):
        marker, name, lang, body = block.groups()
        if marker == "file":
            steps.append(Step("file", body, name))
        elif marker == "excerpt of":
            steps.append(Step("excerpt", body, name))
        elif lang == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    command, _, comment = line[2:].partition("  # ")
                    code = re.fullmatch(r"exit (\d+)", comment.strip())
                    steps.append(Step("run", command.strip(), exit_code=int(code[1]) if code
                                      else 0))
                elif steps and steps[-1].kind == "run":
                    steps[-1].expected.append(line)
    return steps


def substitute_ports(text: str, ports: dict[int, int]) -> str:
    """Each documented port number (as a whole number) becomes its replacement."""
    if not ports:
        return text
    pattern = r"(?<![\w.])(" + "|".join(str(p) for p in ports) + r")(?![\w])"
    return re.sub(pattern, lambda m: str(ports[int(m[1])]), text)


def output_pattern(expected: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*?".join(re.escape(p) for p in line.split("...")) + r"\n")
    return re.compile("".join(parts), re.S)


def output_matches(expected: list[str], actual: str) -> bool:
    actual = actual.replace("\r\n", "\n")
    if actual and not actual.endswith("\n"):
        actual += "\n"
    return output_pattern(expected).fullmatch(actual) is not None


def contains(actual: Any, excerpt: Any) -> bool:
    """Mappings: every key of the excerpt, recursively; lists: each element somewhere."""
    if isinstance(excerpt, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in excerpt.items())
    if isinstance(excerpt, list):
        return isinstance(actual, list) and all(
            any(contains(a, e) for a in actual) for e in excerpt)
    return bool(actual == excerpt)


class Session:
    """One reader's shell: a directory, an environment, background jobs."""

    def __init__(self, cwd: Path, env: dict[str, str], ports: dict[int, int] | None = None,
                 timeout: float = 60.0, inprocess: bool = False) -> None:
        self.cwd, self.env, self.ports, self.timeout = cwd, env, ports or {}, timeout
        self.inprocess = inprocess
        """Run foreground `authz ...` commands through authz.cli.main in this process
        (bash still expands their words); saves a second of imports per command."""
        self.jobs: list[subprocess.Popen[bytes]] = []
        self.transcript: list[str] = []
        self.timings: list[tuple[str, float]] = []

    def sub(self, text: str) -> str:
        return substitute_ports(text, self.ports)

    def run(self, step: Step) -> None:
        if step.kind == "file":
            path = self.cwd / step.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.sub(step.text))
            return
        if step.kind == "excerpt":
            actual = yaml.safe_load((self.cwd / step.name).read_text())
            excerpt = yaml.safe_load(self.sub(step.text))
            assert contains(actual, excerpt), f"{step.name} does not contain:\n{step.text}"
            return
        command = self.sub(step.text)
        expected = [self.sub(line) for line in step.expected]
        self.transcript.append(f"$ {command}")
        started = time.monotonic()
        try:
            self._command(command, expected, step.exit_code)
        finally:
            self.timings.append((command, time.monotonic() - started))

    def _command(self, command: str, expected: list[str], exit_code: int) -> None:
        if command.endswith("&"):
            self._start(command[:-1].strip())
            assert not expected, f"a background job prints nothing here: {command}"
            return
        if command.startswith("kill %"):
            self._kill([int(arg.lstrip("%")) for arg in shlex.split(command)[1:]])
            output, code = "", 0
        elif command == "wait":
            self._wait()
            output, code = "", 0
        elif self.inprocess and INPROCESS.fullmatch(command):
            output, code = self._authz_inprocess(command)
        else:
            proc = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=self.timeout)
            output, code = proc.stdout.decode(errors="replace"), proc.returncode
        self.transcript.append(output)
        assert code == exit_code, (
            f"`{command}` exited {code}, the guide says {exit_code}:\n{output}")
        assert output_matches(expected, output), (
            f"`{command}` printed:\n{output}\nthe guide shows:\n" + "\n".join(expected))

    def _authz_inprocess(self, command: str) -> tuple[str, int]:
        import io

        from authz.cli import main

        words, _, target = command.partition(" > ")
        expand = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + words[len("authz "):]],
                                cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, check=True,
                                timeout=self.timeout)
        args = expand.stdout.decode().split("\0")[:-1]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.chdir(self.cwd), contextlib.redirect_stdout(out if target else err), \
                contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        if target:
            (self.cwd / target.strip()).write_text(out.getvalue())
        return err.getvalue(), code

    def _start(self, command: str) -> None:
        log = (self.cwd / f".job{len(self.jobs) + 1}.out").open("wb")
        with log:
            self.jobs.append(subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=self.cwd, env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _signal(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the job's own process group (start_new_session)

    def _kill(self, numbers: list[int]) -> None:
        for n in numbers:
            assert 1 <= n <= len(self.jobs), f"no job %{n}"
            self._signal(self.jobs[n - 1], signal.SIGTERM)

    def _wait(self) -> None:
        deadline = time.monotonic() + 20
        for proc in self.jobs:
            proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop every job still running: SIGTERM, then SIGKILL after 5 s."""
        for proc in self.jobs:
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.jobs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()


def yaml_blocks(markdown: str) -> list[tuple[str, str]]:
    """(marker, body) of every ```yaml block; marker is '' or e.g. 'file: x.yaml'."""
    return [(f"{m[1]}: {m[2]}" if m[1] else "", m[4]) for m in BLOCK.finditer(markdown)
            if m[3] == "yaml"]
