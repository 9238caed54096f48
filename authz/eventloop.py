"""Which event loop the server runs on: uvloop where it is installed, asyncio's otherwise.

grpc.aio hands every call's completion to the event loop, so the loop is part
of each ``Check``'s fixed cost: under load uvloop cuts ~10% of our CPU per
request (docs/design/performance.md, "The event loop"). ``--event-loop asyncio`` is
there to rule the loop out when something misbehaves. The ``--workers``
supervisor always runs asyncio's loop: it answers no ``Check``, and it talks to
its workers over Linux abstract-namespace Unix sockets, to which uvloop (libuv)
cannot connect (EINVAL; binding them works).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from authz.config import ConfigError, check_event_loop

__all__ = ["current_loop_name", "loop_factory", "run"]

T = TypeVar("T")


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The loop's name and factory for ``choice`` (None: asyncio's default loop)."""
    if check_event_loop(choice) == "asyncio":
        return "asyncio", None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--event-loop uvloop: uvloop is not installed "
                              "(pip install uvloop; it has no Windows build)") from None
        return "asyncio", None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return "uvloop", factory


def run(main: Callable[[], Coroutine[Any, Any, T]], choice: str) -> T:
    """``asyncio.run(main())`` on the chosen loop (the choice is checked before
    ``main`` makes its coroutine, so a bad one leaves nothing unawaited)."""
    _, factory = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def current_loop_name() -> str:
    """What the running loop is, for the startup log line."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
