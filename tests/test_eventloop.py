"""Choosing the event loop: uvloop when installed, asyncio on request or without it."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Coroutine
from typing import Any

import pytest

from authz import eventloop
from authz.cli import serve_command
from authz.config import ConfigError, Settings

uvloop = pytest.importorskip("uvloop", reason="uvloop is a dependency on CPython/Linux/macOS")


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine where ``import uvloop`` fails (Windows, PyPy, a minimal install)."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


async def _loop_name() -> str:
    return eventloop.current_loop_name()


def test_auto_prefers_uvloop() -> None:
    assert eventloop.loop_factory("auto") == ("uvloop", uvloop.new_event_loop)
    assert eventloop.run(_loop_name, "auto") == "uvloop"


def test_asyncio_on_request() -> None:
    assert eventloop.loop_factory("asyncio") == ("asyncio", None)
    assert eventloop.run(_loop_name, "asyncio") == "asyncio"


@pytest.mark.usefixtures("no_uvloop")
def test_auto_without_uvloop_falls_back_to_asyncio() -> None:
    assert eventloop.loop_factory("auto") == ("asyncio", None)
    assert eventloop.run(_loop_name, "auto") == "asyncio"


@pytest.mark.usefixtures("no_uvloop")
def test_asking_for_a_missing_uvloop_says_how_to_get_it() -> None:
    made: list[object] = []

    def main() -> Coroutine[Any, Any, str]:
        made.append(1)
        return _loop_name()

    with pytest.raises(ConfigError, match=re.escape("uvloop is not installed (pip install uvloop")):
        eventloop.run(main, "uvloop")
    assert made == []  # refused before a coroutine existed: nothing left unawaited


def test_an_unknown_loop_is_a_config_error() -> None:
    expected = re.escape("--event-loop: expected auto|uvloop|asyncio, got 'trio'")
    with pytest.raises(ConfigError, match=expected):
        Settings(event_loop="trio")
    with pytest.raises(ConfigError, match="--event-loop"):
        eventloop.loop_factory("trio")


def test_run_returns_what_main_returns_and_closes_its_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        loops.append(asyncio.get_running_loop())
        return 7

    assert eventloop.run(main, "uvloop") == 7
    assert loops[0].is_closed()


@pytest.mark.usefixtures("no_uvloop")
def test_workers_refuse_a_missing_uvloop_before_starting_any() -> None:
    settings = Settings(workers=2, event_loop="uvloop", grpc_address="127.0.0.1:0",
                        http_address="", log_level="error")
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        serve_command(settings)
