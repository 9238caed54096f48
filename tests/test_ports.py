"""The port helper every process-starting test uses."""

from __future__ import annotations

from typing import Any

import pytest

from authz.testing import ports


class _Probe:
    """A socket stand-in whose kernel hands out the ports in `answers`, in order."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers

    def __call__(self) -> _Probe:
        return self

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        assert address == ("127.0.0.1", 0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.answers.pop(0))


def test_a_port_the_kernel_gives_again_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ports.free_port()
    monkeypatch.setattr("socket.socket", _Probe([first, first, 1]))
    assert ports.free_port() == 1


def test_real_ports_are_distinct() -> None:
    picked = [ports.free_port() for _ in range(200)]
    assert len(set(picked)) == len(picked)
