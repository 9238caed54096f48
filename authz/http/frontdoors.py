"""HTTP check requests -> ``RequestView``: the three front doors' ways in.

Each proxy describes the request it asks about in its own way
(docs/http-front-door.md has the contract):

- ``/envoy<path>``: Envoy's ``http_service`` (Istio's ``envoyExtAuthzHttp``) sends
  the original method, ``/envoy`` + the original path and query, the original
  ``Host`` and the headers it was told to pass; the scope comes in headers the
  route adds (``x-authz-namespace``, ``x-authz-labels``), else from the calling
  sidecar's own identity in ``x-forwarded-client-cert`` ``By=``;
- ``/nginx``: nginx ``auth_request`` / ingress-nginx ``auth-url``: ``X-Original-URL``
  (absolute) or ``X-Original-URI`` + ``Host``, ``X-Original-Method``, ``X-Real-IP``;
- ``/traefik``: Traefik ``forwardAuth``: ``X-Forwarded-Method``, ``-Proto``, ``-Host``,
  ``-Uri``, ``-For``.

The headers those conventions use to describe the request are dropped from the
view, and ``host`` becomes ``:authority`` (with ``:method``, ``:path`` and
``:scheme`` beside it) as in the view Envoy's gRPC ``CheckRequest`` gives, so a
policy reads the same headers whichever door the request came through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from enum import Enum
from types import MappingProxyType
from urllib.parse import SplitResult, parse_qs, urlsplit

from authz.http.protocol import HttpRequest
from authz.request.address import XFF, make_peer, parse_ip
from authz.request.scope import LABELS_KEY, NAMESPACE_KEY, Scope, parse_scope, resolve_scope
from authz.request.view import Peer, RequestView, split_path

__all__ = [
    "DESTINATION_HEADER",
    "ENVOY_PREFIX",
    "LABELS_HEADER",
    "NAMESPACE_HEADER",
    "SOURCE_HEADER",
    "XFCC",
    "Door",
    "door_of",
    "parse_xfcc",
    "view_from_http",
]

ENVOY_PREFIX = "/envoy"
NAMESPACE_HEADER = "x-authz-namespace"
LABELS_HEADER = "x-authz-labels"
SOURCE_HEADER = "x-authz-source-address"
"""The downstream peer's address as Envoy saw it (the generated configuration adds
it from ``%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%``); absent, the connection's peer."""
DESTINATION_HEADER = "x-authz-destination-address"
"""``IP:PORT`` the downstream connection arrived on (``destination.ip``, ``ports``,
``destination.port``): the generated configuration adds ``%DOWNSTREAM_LOCAL_ADDRESS%``."""
XFCC = "x-forwarded-client-cert"

PeerMaker = Callable[[str, int | None, str], Peer]
ScopeMaker = Callable[[str, str, str, str], Scope]


class Door(Enum):
    """Which proxy convention a check request follows."""

    ENVOY = "envoy"
    NGINX = "nginx"
    TRAEFIK = "traefik"


def door_of(target: str) -> Door | None:
    """The front door a request-target names; None for any other path."""
    if target.startswith(ENVOY_PREFIX) and (
            len(target) == len(ENVOY_PREFIX) or target[len(ENVOY_PREFIX)] in "/?"):
        return Door.ENVOY
    path = target.partition("?")[0]
    if path == "/nginx":
        return Door.NGINX
    if path == "/traefik":
        return Door.TRAEFIK
    return None


_ENVOY_CONTROL = frozenset({NAMESPACE_HEADER, LABELS_HEADER, SOURCE_HEADER, DESTINATION_HEADER,
                            "host",
                            "content-length",
                            # What Envoy's HTTP client adds to every check it sends.
                            "x-envoy-internal", "x-envoy-expected-rq-timeout-ms"})
_NGINX_CONTROL = frozenset({"x-original-url", "x-original-uri", "x-original-method", "host",
                            "x-real-ip", "content-length"})
_TRAEFIK_CONTROL = frozenset({"x-forwarded-method", "x-forwarded-uri", "host",
                              "content-length"})


def parse_xfcc(value: str) -> tuple[str, str]:
    """(``By``, ``URI``) of the last element of ``x-forwarded-client-cert``: the
    hop nearest to us, i.e. the sidecar that asks (``By``, its own identity) and the
    client certificate it verified (``URI``, the peer). Empty strings if absent."""
    element = _last_element(value)
    by = uri = ""
    for pair in _split_unquoted(element, ";"):
        key, sep, raw = pair.partition("=")
        if not sep:
            continue
        key = key.strip().lower()
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"')
        if key == "by" and not by:
            by = raw
        elif key == "uri" and not uri:
            uri = raw
    return by, uri


def _split_unquoted(text: str, sep: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _last_element(value: str) -> str:
    elements = _split_unquoted(value, ",")
    for element in reversed(elements):
        if element.strip():
            return element
    return ""


def _query_scope(query: str) -> Mapping[str, str]:
    """``namespace`` and ``labels`` from ``/nginx?...`` or ``/traefik?...``."""
    if not query:
        return _EMPTY
    fields = parse_qs(query, keep_blank_values=True)
    out = {}
    for key in (NAMESPACE_KEY, LABELS_KEY):
        values = fields.get(key)
        if values:
            out[key] = values[-1]
    return MappingProxyType(out)


_EMPTY: Mapping[str, str] = MappingProxyType({})
_NO_XFCC = ("", "")
_NO_ADDRESS: tuple[str, int | None] = ("", None)


def _headers(given: Mapping[str, str], drop: frozenset[str], method: str, host: str,
             path: str, scheme: str) -> Mapping[str, str]:
    headers = {name: value for name, value in given.items() if name not in drop}
    headers[":authority"] = host
    headers[":method"] = method
    headers[":path"] = path
    if scheme:
        headers[":scheme"] = scheme
    return MappingProxyType(headers)


def _address(text: str) -> tuple[str, int | None]:
    """``1.2.3.4:80`` or ``[::1]:80`` -> (ip, port); anything else -> ("", None)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        return "", None
    host = host.strip("[]")
    return (host, int(port)) if parse_ip(host) is not None else ("", None)


_URL = re.compile(r"(?:([A-Za-z][A-Za-z0-9+.-]*):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?",
                  re.DOTALL)
"""RFC 3986 appendix B: splits any text into a URL's parts, never refuses."""


def _split_url(url: str) -> SplitResult:
    """``urlsplit``, but a URL it refuses (``http://[::1/x``: a bracket not closed)
    still yields its path, so the policies on that path decide (a fallback to ``/``
    would let a bad ``X-Original-URL`` pass a DENY on the path); no exception, no 500."""
    try:
        return urlsplit(url)
    except ValueError:
        match = _URL.match(url)
        assert match is not None  # every part is optional: the pattern matches any text
        scheme, netloc, path, query, fragment = (g or "" for g in match.groups())
        return SplitResult(scheme.lower(), netloc, path, query, fragment)


def _last_xff(headers: Mapping[str, str]) -> str:
    """The rightmost ``x-forwarded-for`` entry: what the proxy appended, its direct peer."""
    xff = headers.get(XFF, "")
    last = xff.rpartition(",")[2].strip()
    return last if parse_ip(last) is not None else ""


def view_from_http(
    door: Door, request: HttpRequest, default_namespace: str,
    peer: PeerMaker = make_peer, scope: ScopeMaker = parse_scope,
) -> RequestView:
    """The view of the request a check request describes. Raises ``ScopeError`` when
    the given labels cannot be read (the caller denies, as the gRPC path does)."""
    given = request.headers
    if door is Door.ENVOY:
        target = request.target[len(ENVOY_PREFIX):] or "/"
        if not target.startswith("/"):
            target = "/" + target
        method, host = request.method, given.get("host", "")
        scheme = given.get("x-forwarded-proto", "")
        xfcc = given.get(XFCC)
        by, uri = parse_xfcc(xfcc) if xfcc else _NO_XFCC
        source_ip = given.get(SOURCE_HEADER, "").strip() or request.peer_ip
        local = given.get(DESTINATION_HEADER)
        local_ip, local_port = _address(local) if local else _NO_ADDRESS
        extensions = {}
        namespace, labels = given.get(NAMESPACE_HEADER), given.get(LABELS_HEADER)
        if namespace:
            extensions[NAMESPACE_KEY] = namespace
        if labels:
            extensions[LABELS_KEY] = labels
        drop = _ENVOY_CONTROL
    elif door is Door.NGINX:
        url = given.get("x-original-url", "")
        if url:
            parts = _split_url(url)
            host, scheme = parts.netloc or given.get("host", ""), parts.scheme
            target = parts.path or "/"
            if parts.query:
                target = f"{target}?{parts.query}"
        else:
            host, scheme = given.get("host", ""), given.get("x-forwarded-proto", "")
            target = given.get("x-original-uri", "") or "/"
        method = given.get("x-original-method", "") or "GET"
        source_ip = given.get("x-real-ip", "").strip() or _last_xff(given) or request.peer_ip
        by = uri = ""
        local_ip, local_port = _NO_ADDRESS
        extensions = dict(_query_scope(request.target.partition("?")[2]))
        drop = _NGINX_CONTROL
    else:
        method = given.get("x-forwarded-method", "") or "GET"
        host = given.get("x-forwarded-host", "") or given.get("host", "")
        scheme = given.get("x-forwarded-proto", "")
        target = given.get("x-forwarded-uri", "") or "/"
        source_ip = _last_xff(given) or request.peer_ip
        by = uri = ""
        local_ip, local_port = _NO_ADDRESS
        extensions = dict(_query_scope(request.target.partition("?")[2]))
        drop = _TRAEFIK_CONTROL
    path, query = split_path(target)
    headers = _headers(given, drop, method, host, target.partition("#")[0], scheme)
    frozen = MappingProxyType(extensions) if extensions else _EMPTY
    # Over mutual TLS the proxy's own certificate names it, as on the gRPC port:
    # a destination principal the request does not carry (docs/tls.md).
    destination = peer(local_ip, local_port, by or request.peer_principal)
    return RequestView(
        method=method,
        host=host,
        path=path,
        query=query,
        headers=headers,
        source=peer(source_ip, None, uri),
        destination=destination,
        context_extensions=frozen,
        scope=resolve_scope(frozen, destination.principal, default_namespace, scope),
        scheme=scheme,
        protocol="",
        request_id=given.get("x-request-id", ""),
    )
