"""Decisions of repeated requests, keyed by everything a decision can read.

Istio's answer to a request is a function of the policies (a cache belongs to
one snapshot), the time, the JWKS key sets, and these parts of the request: its
scope, method, host, path, query and scheme, the SNI, the source's address and
peer identity, the destination's address, port and identity, and the values of
a few headers. Those headers are, per scope: the ones its JWT rules look for
tokens in (``cookie`` for cookie places), the ones its AuthorizationPolicies
name in ``request.headers[...]`` conditions, ``x-forwarded-for`` (the original
client IP), and ``origin``, ``access-control-request-method`` and
``x-forwarded-proto`` (CORS preflights, the ``WWW-Authenticate`` realm).
Everything else a request carries cannot change the answer: ``x-request-id``,
tracing headers, the client's port, the time Envoy stamped. So requests that
agree on that list share one ``Decision``, and a repeated request skips
authentication and RBAC entirely.

Time and keys are validity, not key: an entry serves only from the moment it
was made until the first moment a token it read can expire or become valid
(``time_horizon``), at most ``max_age`` seconds, and only while the key sets
are the ones it was made with (any JWKS change replaces their ``generation``,
and the cache starts over when it sees a new one).
A clock that steps back makes entries miss, never serve.

The query and the headers enter the key as one SHA-256 digest, so like the
token cache this keeps no usable token in memory, nor any other header value
(an API key a policy compares, a session cookie). A stored key's strings are
interned (``put``): a hit builds and drops its key, an entry keeps the one copy
of a method, host or path that every entry shares (~400 bytes less each). The
cache is bounded and starts over when full (``memo.py``); ``--decision-cache-size``
sets the bound, 0 turns it off.

Pays: a hit (w1-w4) costs ~140k instructions per ``Check`` against ~300k for a
miss with the token cached and ~910k with a new token: 53-85% of a ``Check``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import get_type_hints

from authz.decision import Decision
from authz.errors import AuthzError
from authz.request.view import Peer, RequestView

__all__ = ["DecisionCache", "Inputs", "request_key"]

Key = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Inputs:
    """The headers a scope's decisions read, in a fixed order."""

    headers: tuple[str, ...]

    @classmethod
    def of(cls, *names: frozenset[str]) -> Inputs:
        return cls(tuple(sorted(frozenset().union(*names))))


def request_key(view: RequestView, inputs: Inputs) -> Key:
    """Equal for two requests exactly when they agree on everything ``inputs`` and the
    fixed parts of the view say a decision can read."""
    headers = view.headers
    values = [headers.get(name) for name in inputs.headers]
    digest: bytes | None = None  # no query and none of the headers: nothing to hash
    if view.query or values.count(None) != len(values):
        # Length-prefixed, an absent header distinct from an empty one: no two
        # different inputs digest alike however their values are chosen.
        parts = [f"{len(view.query)}:{view.query}"]
        parts.extend("-" if value is None else f"{len(value)}:{value}" for value in values)
        digest = hashlib.sha256("".join(parts).encode("utf-8", "surrogatepass")).digest()
    source, destination = view.source, view.destination
    metadata = view.metadata
    return (
        view.scope.key, view.method, view.host, view.path, view.scheme, view.sni,
        source.ip, source.principal, destination.ip, destination.port, destination.principal,
        digest,
        tuple(sorted((f, tuple(sorted(kv.items()))) for f, kv in metadata.items()))
        if metadata else None,
    )


class DecisionCache:
    """``Key -> Decision`` while the time and the key sets allow (module docstring)."""

    __slots__ = ("_decisions", "_generation", "_validity", "hits", "max_age", "misses",
                 "size")

    def __init__(self, size: int, max_age: float) -> None:
        self.size = size
        self.max_age = max_age
        self._decisions: dict[Key, Decision] = {}
        self._validity: dict[Key, tuple[float, float]] = {}
        """(since, until) beside each decision rather than in one tuple with it: numbers
        only, untracked by the cycle collector (``memo.py``)."""
        self._generation: object = None
        """The key sets every entry was made with: another generation starts over."""
        self.hits = 0
        self.misses = 0

    def get(self, key: Key, now: float, generation: object) -> Decision | None:
        if generation is not self._generation:
            self._start_over(generation)
        decision = self._decisions.get(key)
        if decision is not None:
            since, until = self._validity[key]
            if since <= now < until:
                self.hits += 1
                return decision
        self.misses += 1
        return None

    def put(self, key: Key, decision: Decision, now: float, until: float,
            generation: object) -> Decision:
        """Remember ``decision``, made with the key sets ``generation``, from ``now``
        until ``until`` (capped at ``max_age``)."""
        if self.size <= 0:
            return decision
        if generation is not self._generation or len(self._decisions) >= self.size:
            self._start_over(generation)  # full, or new keys: start over (``memo.py``)
        key = tuple([sys.intern(part) if part.__class__ is str else part for part in key])
        self._decisions[key] = decision
        self._validity[key] = (now, min(until, now + self.max_age))
        return decision

    def _start_over(self, generation: object) -> None:
        self._decisions.clear()
        self._validity.clear()
        self._generation = generation

    def __len__(self) -> int:
        return len(self._decisions)


# -- What the key holds, field by field ------------------------------------------------
# Every field of ``RequestView`` (a peer's fields one by one) is either in the key or
# deliberately out of it, with the reason. A field added to the view is neither until
# someone decides: importing this module then fails (``check_key_covers``), rather than
# the cache serving one request's decision to another that differs in the new field.

KEYED_FIELDS: frozenset[str] = frozenset({
    "method", "host", "path", "scheme", "sni", "scope",
    "query", "headers",  # through the digest; the headers ``Inputs`` names, no others
    "source.ip", "source.principal",
    "destination.ip", "destination.port", "destination.principal",
    "metadata",  # by value; None when the request carries none (the usual case)
})
"""The view's fields ``request_key`` holds (``scope`` by its key)."""

UNKEYED_FIELDS: Mapping[str, str] = MappingProxyType({
    "context_extensions": "read only to build ``scope``, which is keyed",
    "protocol": "the HTTP version: no policy attribute reads it",
    "request_id": "unique per request: keying it would make every request miss",
    "source.port": "the client's ephemeral port: no policy attribute reads it",
})
"""The view's fields deliberately left out of the key, each with why no decision reads it."""


class KeyCoverageError(AuthzError):
    """A view field is neither keyed nor deliberately unkeyed (or the lists are stale).

    A maintainer's error, raised at import: add the new ``RequestView`` field to
    ``KEYED_FIELDS`` if a decision can read it, else to ``UNKEYED_FIELDS`` with the reason."""


def view_fields(view: type[tuple[object, ...]] = RequestView) -> frozenset[str]:
    """Every field of ``view``; a ``Peer`` as its own fields, ``source.ip`` and so on
    (the key takes a peer apart; the scope it takes whole, by its ``key``)."""
    out: set[str] = set()
    for name, kind in get_type_hints(view).items():
        if kind is Peer:
            out.update(f"{name}.{f.name}" for f in dataclasses.fields(Peer))
        else:
            out.add(name)
    return frozenset(out)


def check_key_covers(fields: Iterable[str], keyed: frozenset[str] = KEYED_FIELDS,
                     unkeyed: Mapping[str, str] = UNKEYED_FIELDS) -> None:
    """Raise ``KeyCoverageError`` unless ``fields`` are exactly ``keyed`` plus ``unkeyed``,
    with no field in both."""
    fields = frozenset(fields)
    listed = keyed | unkeyed.keys()
    problems = [f"{name}: neither in the decision-cache key (KEYED_FIELDS) nor deliberately "
                "left out of it (UNKEYED_FIELDS)" for name in sorted(fields - listed)]
    problems += [f"{name}: both keyed and unkeyed" for name in sorted(keyed & unkeyed.keys())]
    problems += [f"{name}: listed, but the request view has no such field"
                 for name in sorted(listed - fields)]
    if problems:
        raise KeyCoverageError("decision-cache key coverage: " + "; ".join(problems))


check_key_covers(view_fields())
