"""CheckRequest -> RequestView: everything later steps read, parsed once.

Envoy sends headers either as ``attributes.request.http.headers`` (a map with
lower-cased names, repeated headers already joined with ``,``) or, with the
filter's ``encode_raw_headers`` on, as ``header_map`` entries whose value is in
``raw_value`` bytes and where a repeated header is one entry per occurrence. Both
become the same lower-cased, joined mapping here. ``path`` arrives with the
query; it is split once here so matchers never see ``?``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from authz._proto.envoy.config.core.v3 import address_pb2
from authz._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from authz.scope import Scope, resolve_scope

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of the downstream connection as Envoy saw it."""

    ip: str = ""
    port: int | None = None
    principal: str = ""
    """The peer certificate's URI SAN (else subject), e.g. an Istio SPIFFE id."""


class RequestView(NamedTuple):
    """An immutable, parsed view of one ``CheckRequest``.

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


def _join(name: str, existing: str, value: str) -> str:
    # HTTP/2 splits cookies into one header per crumb (RFC 9113 8.2.3); they
    # rejoin with "; ". Every other repeated header joins with "," as Envoy does.
    return f"{existing}; {value}" if name == "cookie" else f"{existing},{value}"


def read_headers(http: attribute_context_pb2.AttributeContext.HttpRequest) -> Mapping[str, str]:
    if http.HasField("header_map") and http.header_map.headers:
        merged: dict[str, str] = {}
        for entry in http.header_map.headers:
            name = entry.key.lower()
            value = (
                entry.raw_value.decode("utf-8", "surrogateescape")
                if entry.raw_value
                else entry.value
            )
            merged[name] = _join(name, merged[name], value) if name in merged else value
        return MappingProxyType(merged)
    fields = http.headers
    if not fields:
        return _EMPTY
    # Envoy already lower-cases and joins, so the message's own map is read in place
    # (its get and membership are C calls) behind a read-only proxy, instead of being
    # copied. Other clients of this API may send other cases: one scan of all names
    # decides, and those are copied lower-cased.
    if "".join(fields).islower():
        return MappingProxyType(fields)
    return MappingProxyType({name.lower(): fields[name] for name in fields})


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` names, None if it is not one (a pipe path, a name).
    Peers and forwarded-for entries repeat, so each distinct text is parsed once."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def normalize_ip(text: str) -> str:
    """Canonical text of an address (``::FFFF:1.2.3.4`` and ``0:0::1`` forms differ
    from what CIDR matching prints); anything else is kept as sent."""
    ip = parse_ip(text)
    return text if ip is None else str(ip)


def read_peer(peer: attribute_context_pb2.AttributeContext.Peer) -> Peer:
    # An unset socket_address reads as an empty one: address "" and port 0.
    sock: address_pb2.SocketAddress = peer.address.socket_address
    port: int | None = sock.port_value
    if not port and sock.WhichOneof("port_specifier") != "port_value":
        port = None
    return _peer(sock.address, port, peer.principal)


@functools.lru_cache(maxsize=4096)
def _peer(address: str, port: int | None, principal: str) -> Peer:
    """Peers repeat (Envoy's listener, its few upstream connections' clients), so each
    distinct one is parsed and built once; ``Peer`` is immutable, so it is shared."""
    return Peer(ip=normalize_ip(address) if address else "", port=port, principal=principal)


def view_from_check_request(
    request: external_auth_pb2.CheckRequest, default_namespace: str
) -> RequestView:
    """Build the view. Missing parts of the request read as empty, never as errors."""
    attrs = request.attributes
    http = attrs.request.http
    headers = read_headers(http)
    path, query = split_path(http.path or headers.get(":path", ""))
    destination = read_peer(attrs.destination)
    given = attrs.context_extensions
    extensions = MappingProxyType({k: given[k] for k in given}) if given else _EMPTY
    return RequestView(
        method=http.method or headers.get(":method", ""),
        host=http.host or headers.get(":authority", "") or headers.get("host", ""),
        path=path,
        query=query,
        headers=headers,
        source=read_peer(attrs.source),
        destination=destination,
        context_extensions=extensions,
        scope=resolve_scope(extensions, destination.principal, default_namespace),
        scheme=http.scheme or headers.get(":scheme", ""),
        protocol=http.protocol,
        # x-request-id is the id operators trace across proxies; Envoy's http.id is
        # only its stream number.
        request_id=headers.get("x-request-id", "") or http.id,
        sni=attrs.tls_session.sni,
    )
