"""Resources -> an immutable Snapshot that decides requests.

A snapshot is compiled once, off the request path, and replaced whole: the
request path reads ``store.current`` once and keeps that object for the rest of
the ``Check``, so a reload never changes a decision half-way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from authz.decision import Decision, Reason
from authz.envoy.request_view import RequestView
from authz.policy.errors import PolicyError, PolicyErrors
from authz.policy.load import Resource

log = structlog.get_logger("authz.policy")

ISTIO_SECURITY_GROUP = "security.istio.io/"
ENFORCED_KINDS: frozenset[str] = frozenset()
"""Kinds this build enforces. Istio security kinds it cannot enforce are refused."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    resources: tuple[Resource, ...]

    def evaluate(self, view: RequestView, now: float) -> Decision:
        """Decide one request. Pure: no I/O, no awaits, no shared writes."""
        del view, now  # with no enforceable policy, Istio allows every request
        return Decision.allow(Reason.NO_POLICY)


def compile_snapshot(resources: Sequence[Resource], version: int) -> Snapshot:
    """Validate and compile; raise ``PolicyErrors`` naming every bad resource.

    Resources of kinds that are not policies are ignored (a mounted ConfigMap
    folder often holds other files). An Istio security resource that this build
    cannot enforce is an error, never a silent allow.
    """
    errors: list[PolicyError] = []
    kept: list[Resource] = []
    for res in resources:
        if res.api_version.startswith(ISTIO_SECURITY_GROUP):
            if res.kind in ENFORCED_KINDS:
                kept.append(res)
            else:
                errors.append(
                    PolicyError(
                        f"{res.api_version} {res.kind} is not enforced by this version of authz",
                        res.location,
                        res.ref,
                    )
                )
            continue
        log.debug("resource_ignored", kind=res.kind, name=res.name, file=res.location.file)
    if errors:
        raise PolicyErrors(errors)
    return Snapshot(version=version, resources=tuple(kept))


class SnapshotStore:
    """Holds the snapshot in use. Swapping is one reference assignment."""

    def __init__(self, initial: Snapshot | None = None) -> None:
        self._current = initial or Snapshot(version=0, resources=())

    @property
    def current(self) -> Snapshot:
        return self._current

    def swap(self, snapshot: Snapshot) -> Snapshot:
        previous, self._current = self._current, snapshot
        return previous
