from __future__ import annotations

import pytest

from authz._proto.envoy.config.core.v3 import base_pb2
from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.envoy.request_view import view_from_check_request
from authz.request.scope import Scope
from authz.request.view import split_path


def _request() -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method = "POST"
    http.host = "api.example.com:8080"
    http.path = "/v1/items?limit=5&token=abc#frag"
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    http.id = "req-1"
    src = req.attributes.source
    src.address.socket_address.address = "10.0.0.7"
    src.address.socket_address.port_value = 43210
    src.principal = "spiffe://cluster.local/ns/client/sa/caller"
    dst = req.attributes.destination
    dst.address.socket_address.address = "10.0.0.9"
    dst.address.socket_address.port_value = 8080
    dst.principal = "spiffe://cluster.local/ns/shop/sa/api"
    req.attributes.tls_session.sni = "api.example.com"
    return req


def test_fields_are_read_once_into_the_view() -> None:
    req = _request()
    req.attributes.request.http.headers["x-a"] = "1"
    view = view_from_check_request(req, "default")
    assert (view.method, view.host, view.scheme, view.protocol) == (
        "POST", "api.example.com:8080", "https", "HTTP/1.1")
    assert view.path == "/v1/items"
    assert view.query == "limit=5&token=abc"
    assert view.original_path == "/v1/items?limit=5&token=abc"
    assert view.source.ip == "10.0.0.7" and view.source.port == 43210
    assert view.source.principal == "spiffe://cluster.local/ns/client/sa/caller"
    assert view.destination.port == 8080
    assert view.sni == "api.example.com"
    assert view.request_id == "req-1"
    assert view.header("X-A") == "1"


def test_view_is_immutable() -> None:
    view = view_from_check_request(_request(), "default")
    with pytest.raises(AttributeError):
        view.path = "/other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        view.headers["x"] = "y"  # type: ignore[index]


def test_headers_map_is_lowercased() -> None:
    req = _request()
    req.attributes.request.http.headers["X-Mixed"] = "v"
    assert view_from_check_request(req, "d").headers == {"x-mixed": "v"}


def test_raw_header_map_joins_repeats_like_envoy() -> None:
    req = _request()
    hm = req.attributes.request.http.header_map
    hm.headers.extend(
        [
            base_pb2.HeaderValue(key="X-Forwarded-For", raw_value=b"1.1.1.1"),
            base_pb2.HeaderValue(key="x-forwarded-for", raw_value=b"2.2.2.2"),
            base_pb2.HeaderValue(key="cookie", raw_value=b"a=1"),
            base_pb2.HeaderValue(key="cookie", raw_value=b"b=2"),
            base_pb2.HeaderValue(key="x-bytes", raw_value="caf\u00e9".encode()),
            base_pb2.HeaderValue(key="x-plain", value="old-style"),
        ]
    )
    view = view_from_check_request(req, "d")
    assert view.headers["x-forwarded-for"] == "1.1.1.1,2.2.2.2"
    assert view.headers["cookie"] == "a=1; b=2"
    assert view.headers["x-bytes"] == "caf\u00e9"
    assert view.headers["x-plain"] == "old-style"


def test_non_utf8_raw_header_does_not_raise() -> None:
    req = _request()
    req.attributes.request.http.header_map.headers.add(key="x-bin", raw_value=b"\xff\xfe")
    view = view_from_check_request(req, "d")
    assert "x-bin" in view.headers


def test_empty_request_reads_as_empty_not_error() -> None:
    view = view_from_check_request(external_auth_pb2.CheckRequest(), "fallback")
    assert (view.method, view.path, view.query, view.host) == ("", "", "", "")
    assert view.headers == {}
    assert view.source.ip == "" and view.source.port is None
    assert view.scope == Scope("fallback")


def test_pseudo_headers_fill_missing_fields() -> None:
    req = external_auth_pb2.CheckRequest()
    h = req.attributes.request.http.headers
    h[":method"], h[":path"], h[":authority"] = "GET", "/p?q=1", "h"
    view = view_from_check_request(req, "d")
    assert (view.method, view.path, view.query, view.host) == ("GET", "/p", "q=1", "h")


def test_ipv6_peer_is_normalized() -> None:
    req = _request()
    req.attributes.source.address.socket_address.address = "0:0:0:0:0:0:0:1"
    assert view_from_check_request(req, "d").source.ip == "::1"


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [("/", "/", ""), ("/a?b", "/a", "b"), ("/a?b=1?c", "/a", "b=1?c"), ("/a#f?x", "/a", ""),
     ("", "", ""), ("/a?", "/a", "")],
)
def test_split_path(raw: str, path: str, query: str) -> None:
    assert split_path(raw) == (path, query)


def test_scope_from_context_extensions_then_spiffe_then_default() -> None:
    req = _request()
    assert view_from_check_request(req, "d").scope == Scope("shop")
    req.attributes.context_extensions["namespace"] = "orders"
    req.attributes.context_extensions["labels"] = "app=api, version=v2"
    view = view_from_check_request(req, "d")
    assert view.scope.namespace == "orders"
    assert dict(view.scope.labels) == {"app": "api", "version": "v2"}
    req.attributes.ClearField("context_extensions")
    req.attributes.destination.principal = ""
    assert view_from_check_request(req, "dflt").scope == Scope("dflt")


def test_x_request_id_wins_over_envoys_stream_id() -> None:
    req = _request()
    req.attributes.request.http.headers["x-request-id"] = "trace-me"
    assert view_from_check_request(req, "d").request_id == "trace-me"


def test_only_a_numeric_port_is_a_port() -> None:
    req = external_auth_pb2.CheckRequest()
    req.attributes.source.address.socket_address.address = "10.0.0.1"
    req.attributes.source.address.socket_address.named_port = "http"
    req.attributes.destination.address.socket_address.address = "10.0.0.2"
    req.attributes.destination.address.socket_address.port_value = 0
    view = view_from_check_request(req, "d")
    assert (view.source.ip, view.source.port) == ("10.0.0.1", None)
    assert (view.destination.ip, view.destination.port) == ("10.0.0.2", 0)


def test_mixed_case_header_names_are_lowercased_all_lowercase_kept() -> None:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.headers["x-a"] = "1"
    req.attributes.request.http.headers["X-B"] = "2"
    assert dict(view_from_check_request(req, "d").headers) == {"x-a": "1", "x-b": "2"}
    req.attributes.request.http.headers.clear()
    req.attributes.request.http.headers[":path"] = "/p"
    req.attributes.request.http.headers["x-c"] = "3"
    assert dict(view_from_check_request(req, "d").headers) == {":path": "/p", "x-c": "3"}


def test_one_parser_for_every_address_text() -> None:
    from authz.request.address import normalize_ip, parse_ip

    assert str(parse_ip("0:0::1")) == "::1" and normalize_ip("0:0::1") == "::1"
    assert parse_ip("/var/run/envoy.sock") is None
    assert normalize_ip("/var/run/envoy.sock") == "/var/run/envoy.sock"
    assert parse_ip(" 10.0.0.1") is None  # no blanks: Envoy's addresses have none


def test_metadata_context_strings_are_read_per_filter() -> None:
    req = _request()
    jwt = req.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"]
    jwt.fields["user"].string_value = "alice"
    jwt.fields["payload"].struct_value.fields["sub"].string_value = "alice"
    jwt.fields["count"].number_value = 3
    req.attributes.metadata_context.filter_metadata["envoy.filters.http.empty"].SetInParent()
    view = view_from_check_request(req, "default")
    assert dict(view.metadata) == {"envoy.filters.http.jwt_authn": {"user": "alice"}}
    assert view_from_check_request(_request(), "default").metadata == {}
