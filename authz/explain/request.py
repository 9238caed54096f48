"""A request described in words (URL, method, headers, scope, peer) -> the
``CheckRequest`` Envoy would send, so offline tools and the debug endpoint decide
it through the adapter's own ``RequestView``."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.envoy.request_view import view_from_check_request
from authz.errors import AuthzError
from authz.request.scope import LABELS_KEY, NAMESPACE_KEY, ScopeError, parse_labels
from authz.request.view import RequestView

__all__ = ["RequestSpec", "RequestSpecError", "spec_from_json"]


class RequestSpecError(AuthzError, ValueError):
    """A request description that cannot be turned into a CheckRequest (a relative
    URL, a bad address, a header without a colon): fix the field the message names."""


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as a person writes it down."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    """(name, value) pairs; a repeated name is joined as Envoy joins it."""
    source_ip: str = "127.0.0.1"
    source_principal: str = ""
    namespace: str | None = None
    labels: str | None = None
    """``k=v,k2=v2``, as a route's context extension carries them."""
    sni: str = ""
    context: Mapping[str, str] = field(default_factory=dict)
    """Other context extensions (``gateway``...) passed as the route would."""

    def check_request(self) -> external_auth_pb2.CheckRequest:
        try:
            ipaddress.ip_address(self.source_ip)
        except ValueError:
            raise RequestSpecError(
                f"source ip must be an IPv4 or IPv6 address (got {self.source_ip!r})") from None
        parts = urlsplit(self.url)
        if not parts.scheme or not parts.netloc:
            raise RequestSpecError(f"url must be absolute, like http://host/path (got "
                                   f"{self.url!r})")
        req = external_auth_pb2.CheckRequest()
        http = req.attributes.request.http
        http.method = self.method.upper()
        http.scheme = parts.scheme
        http.host = parts.netloc
        http.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        http.protocol = "HTTP/1.1"
        for name, value in self.headers:
            key = name.strip().lower()
            if not key:
                raise RequestSpecError(f"header name is empty (value {value!r})")
            value = value.strip()
            if key in http.headers:
                sep = "; " if key == "cookie" else ","
                http.headers[key] = f"{http.headers[key]}{sep}{value}"
            else:
                http.headers[key] = value
        http.headers.setdefault(":authority", parts.netloc)
        src = req.attributes.source
        src.address.socket_address.address = self.source_ip
        src.address.socket_address.port_value = 50000
        src.principal = self.source_principal
        dst = req.attributes.destination
        dst.address.socket_address.address = "127.0.0.1"
        dst.address.socket_address.port_value = parts.port or (
            443 if parts.scheme == "https" else 80)
        if self.sni:
            req.attributes.tls_session.sni = self.sni
        for key, value in self.context.items():
            req.attributes.context_extensions[key] = value
        if self.namespace:
            req.attributes.context_extensions[NAMESPACE_KEY] = self.namespace
        if self.labels:
            try:
                parse_labels(self.labels)
            except ScopeError as exc:
                raise RequestSpecError(f"labels: {exc}") from None
            req.attributes.context_extensions[LABELS_KEY] = self.labels
        return req

    def view(self, default_namespace: str = "default") -> RequestView:
        return view_from_check_request(self.check_request(), default_namespace)


def _strings(value: Any, what: str) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) for k, v in value.items()):
        raise RequestSpecError(f"{what} must be a mapping of names to strings")
    return {k: str(v) for k, v in value.items()}


def spec_from_json(data: Any) -> RequestSpec:
    """``{"url", "method", "headers": {...}, "namespace", "labels": {...} | "k=v",
    "source": {"ip", "principal"}, "sni"}`` -> a ``RequestSpec``."""
    if not isinstance(data, Mapping):
        raise RequestSpecError("the request description must be a JSON object")
    known = {"url", "method", "headers", "namespace", "labels", "source", "sni", "context"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RequestSpecError(f"unknown field(s) {', '.join(unknown)}; known: "
                               f"{', '.join(sorted(known))}")
    url = data.get("url")
    if not isinstance(url, str):
        raise RequestSpecError("url is required, like http://api.local/orders")
    headers: Sequence[tuple[str, str]] = tuple(_strings(data.get("headers"), "headers").items())
    labels = data.get("labels")
    if isinstance(labels, Mapping):
        labels = ",".join(f"{k}={v}" for k, v in _strings(labels, "labels").items())
    elif labels is not None and not isinstance(labels, str):
        raise RequestSpecError("labels must be k=v,k2=v2 or a mapping")
    source = data.get("source") or {}
    if not isinstance(source, Mapping):
        raise RequestSpecError("source must be an object with ip and principal")
    method, namespace, sni = data.get("method", "GET"), data.get("namespace"), data.get("sni", "")
    for name, value in (("method", method), ("sni", sni), ("source.ip", source.get("ip", "")),
                        ("source.principal", source.get("principal", ""))):
        if not isinstance(value, str):
            raise RequestSpecError(f"{name} must be a string")
    if namespace is not None and not isinstance(namespace, str):
        raise RequestSpecError("namespace must be a string")
    return RequestSpec(
        url=url, method=method, headers=tuple(headers),
        source_ip=source.get("ip") or "127.0.0.1", source_principal=source.get("principal", ""),
        namespace=namespace, labels=labels or None, sni=sni,
        context=_strings(data.get("context"), "context"),
    )
