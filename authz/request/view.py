"""The request to authorize, as every engine reads it: transport-neutral.

Adapters (``authz.envoy`` for gRPC ``CheckRequest``; an HTTP front door) build a
``RequestView`` once per request: headers lower-cased and joined, the path split
from its query, the peers and the scope. Everything below the adapters reads this
and nothing else of the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from authz.request.scope import Scope

__all__ = ["Peer", "RequestView", "join_header", "split_path"]


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of the downstream connection as Envoy saw it."""

    ip: str = ""
    port: int | None = None
    principal: str = ""
    """The peer certificate's URI SAN (else subject), e.g. an Istio SPIFFE id."""


class RequestView(NamedTuple):
    """An immutable, parsed view of one request to authorize, whatever transport
    carried it (a gRPC ``CheckRequest``, an HTTP check request).

    A named tuple rather than a frozen dataclass: one is built per ``Check``, and a
    frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) took
    2.2 µs of it against 0.7 µs for a tuple built in C (docs/design/performance.md).
    """

    method: str
    host: str
    path: str
    """The request path without query or fragment, as Envoy normalized it."""
    query: str
    """The raw query string after ``?`` (no fragment), still percent-encoded."""
    headers: Mapping[str, str]
    """Lower-cased names; repeated headers joined with ``,`` (``; `` for cookie)."""
    source: Peer
    destination: Peer
    context_extensions: Mapping[str, str]
    scope: Scope
    scheme: str = ""
    protocol: str = ""
    request_id: str = ""
    sni: str = ""
    metadata: Mapping[str, Mapping[str, str]] = MappingProxyType({})
    """Envoy dynamic metadata the check request carries (``metadata_context``): filter
    name -> key -> value, string values only (what ``experimental.envoy.filters.*``
    conditions compare; Istio builds them as string matchers)."""

    @property
    def original_path(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def split_path(raw: str) -> tuple[str, str]:
    """``/a/b?x=1#f`` -> (``/a/b``, ``x=1``)."""
    path, _, _fragment = raw.partition("#")
    path, _, query = path.partition("?")
    return path, query


def join_header(name: str, existing: str, value: str) -> str:
    # HTTP/2 splits cookies into one header per crumb (RFC 9113 8.2.3); they
    # rejoin with "; ". Every other repeated header joins with "," as Envoy does.
    return f"{existing}; {value}" if name == "cookie" else f"{existing},{value}"
