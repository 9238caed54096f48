"""gRPC ``CheckRequest`` -> ``RequestView``: the Envoy adapter's way in.

Envoy sends headers either as ``attributes.request.http.headers`` (a map with
lower-cased names, repeated headers already joined with ``,``) or, with the
filter's ``encode_raw_headers`` on, as ``header_map`` entries whose value is in
``raw_value`` bytes and where a repeated header is one entry per occurrence. Both
become the same lower-cased, joined mapping here. ``path`` arrives with the
query; it is split once here so matchers never see ``?``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from authz._proto.envoy.config.core.v3 import address_pb2
from authz._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from authz.request.address import make_peer
from authz.request.scope import Scope, parse_scope, resolve_scope
from authz.request.view import Peer, RequestView, join_header, split_path

__all__ = ["read_headers", "read_peer", "view_from_check_request"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


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
            merged[name] = join_header(name, merged[name], value) if name in merged else value
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


def read_peer(peer: attribute_context_pb2.AttributeContext.Peer,
              make: Callable[[str, int | None, str], Peer] = make_peer,
              principal: str = "") -> Peer:
    """``make``: ``make_peer`` or the snapshot's memoized copy (``Snapshot.peer``):
    peers repeat (Envoy's listener, its few upstream connections' clients).
    ``principal`` stands in when the message carries none."""
    # An unset socket_address reads as an empty one: address "" and port 0.
    sock: address_pb2.SocketAddress = peer.address.socket_address
    port: int | None = sock.port_value
    if not port and sock.WhichOneof("port_specifier") != "port_value":
        port = None
    return make(sock.address, port, peer.principal or principal)


_NO_METADATA: Mapping[str, Mapping[str, str]] = MappingProxyType({})


def read_metadata(attrs: attribute_context_pb2.AttributeContext,
                  ) -> Mapping[str, Mapping[str, str]]:
    """``metadata_context.filter_metadata``: the string values under each filter's name.

    Envoy sends the namespaces its ext_authz filter names in
    ``metadata_context_namespaces`` (e.g. ``envoy.filters.http.jwt_authn`` when
    jwt_authn runs first). Istio's conditions compare one top-level key as a string
    (``MetadataStringMatcher``); any other value cannot match, so it is not kept."""
    if not attrs.HasField("metadata_context"):
        return _NO_METADATA
    found: dict[str, Mapping[str, str]] = {}
    for name, struct in attrs.metadata_context.filter_metadata.items():
        strings = {key: value.string_value for key, value in struct.fields.items()
                   if value.WhichOneof("kind") == "string_value"}
        if strings:
            found[name] = MappingProxyType(strings)
    return MappingProxyType(found) if found else _NO_METADATA


def view_from_check_request(
    request: external_auth_pb2.CheckRequest, default_namespace: str,
    peer: Callable[[str, int | None, str], Peer] = make_peer,
    scope: Callable[[str, str, str, str], Scope] = parse_scope,
    envoy_principal: str = "",
) -> RequestView:
    """Build the view. Missing parts of the request read as empty, never as errors.
    ``peer`` and ``scope``: the snapshot's memoized parsers of what repeats.

    ``envoy_principal`` is the calling Envoy's own identity (its mutual-TLS client
    certificate): the destination principal when the request names none, because the
    proxy asking is the workload's own (Istio's CUSTOM action: the sidecar calls)."""
    attrs = request.attributes
    http = attrs.request.http
    headers = read_headers(http)
    path, query = split_path(http.path or headers.get(":path", ""))
    destination = read_peer(attrs.destination, peer, envoy_principal)
    given = attrs.context_extensions
    extensions = MappingProxyType({k: given[k] for k in given}) if given else _EMPTY
    return RequestView(
        method=http.method or headers.get(":method", ""),
        host=http.host or headers.get(":authority", "") or headers.get("host", ""),
        path=path,
        query=query,
        headers=headers,
        source=read_peer(attrs.source, peer),
        destination=destination,
        context_extensions=extensions,
        scope=resolve_scope(extensions, destination.principal, default_namespace, scope),
        scheme=http.scheme or headers.get(":scheme", ""),
        protocol=http.protocol,
        # x-request-id is the id operators trace across proxies; Envoy's http.id is
        # only its stream number.
        request_id=headers.get("x-request-id", "") or http.id,
        sni=attrs.tls_session.sni,
        metadata=read_metadata(attrs),
    )
