"""Steady load through Envoy: concurrent closed-loop clients that record every answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Answer:
    start: float
    end: float
    path: str
    status: int
    """HTTP status, or 0 when the connection failed."""
    tag: str = ""
    """What the request carried (e.g. which token), for the test to judge."""


Request = tuple[str, Mapping[str, str], str]
"""(path, headers, tag)"""


class Load:
    """``clients`` loops over ``requests()`` against Envoy until stopped."""

    def __init__(self, port: int, requests: Callable[[], Sequence[Request]],
                 clients: int = 4) -> None:
        self._url = f"http://127.0.0.1:{port}"
        self._requests = requests
        self._clients = clients
        self._stop = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.answers: list[Answer] = []

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            for path, headers, tag in self._requests():
                await self._running.wait()
                start = time.monotonic()
                try:
                    async with session.get(self._url + path, headers=headers) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, OSError):
                    status = 0
                self.answers.append(Answer(start, time.monotonic(), path, status, tag))
                if self._stop.is_set():
                    return

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._client(self._session))
                       for _ in range(self._clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def pause(self, seconds: float) -> None:
        """No new request for ``seconds``: a lull in traffic."""
        self._running.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._running.set()

    def between(self, after: float, before: float = float("inf")) -> list[Answer]:
        return [a for a in self.answers if a.start >= after and a.end <= before]
