"""gRPC core settings that only take effect from the environment, before grpc loads.

gRPC core reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is imported: setting it
later changes nothing. So the ``authz`` command and ``python -m authz`` call
``apply`` before anything imports grpc, and worker processes inherit it from the
supervisor's environment.

``-event_engine_listener`` switches off the EventEngine listener, so accepted
connections are read and written on gRPC's poller instead of being handed
between EventEngine's own threads and grpc.aio's: 3.5 fewer context switches
per ``Check`` and ~10% less CPU per call on one core, the same for a bare
servicer (docs/design/performance.md, "gRPC core settings"). The listener it falls
back to is the one gRPC used before EventEngine; an experiment name a later
gRPC no longer knows is ignored, so the setting can only stop helping, not
break a start.

A ``GRPC_EXPERIMENTS`` already in the environment wins as it is, even empty
(``GRPC_EXPERIMENTS=`` gives gRPC's own defaults).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

__all__ = ["apply"]

DEFAULTS: Mapping[str, str] = {"GRPC_EXPERIMENTS": "-event_engine_listener"}


def apply(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each of ``DEFAULTS`` the environment does not already set; return what
    is in effect, i.e. what a process started with ``environ`` gets (bench/run.py
    gives its bare-tuned reference exactly that)."""
    for name, value in DEFAULTS.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in DEFAULTS}
