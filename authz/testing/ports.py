"""Loopback ports for the processes a test or a benchmark starts."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process handed out before.

    The kernel may give a port it just gave to a closed probe socket out again, so two
    ports picked in a row can be equal (a CI run lost Envoy to exactly that: its admin
    port was the authz admin port). Remembering the ports handed out rules that out.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
