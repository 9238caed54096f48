"""Each front door's check request becomes the view the gRPC path would build."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from authz.http.frontdoors import Door, door_of, parse_xfcc, view_from_http
from authz.http.protocol import HttpRequest
from authz.request.scope import ScopeError


def request(target: str, headers: dict[str, str], method: str = "GET",
            peer: str = "10.0.0.9") -> HttpRequest:
    return HttpRequest(method, target, MappingProxyType(headers), peer, 40000)


@pytest.mark.parametrize(("target", "door"), [
    ("/envoy/api/x?q=1", Door.ENVOY), ("/envoy", Door.ENVOY), ("/envoy?x=1", Door.ENVOY),
    ("/envoyx", None), ("/nginx", Door.NGINX), ("/nginx?namespace=a", Door.NGINX),
    ("/nginx/x", None), ("/traefik", Door.TRAEFIK), ("/traefik?labels=a%3Db", Door.TRAEFIK),
    ("/", None), ("/readyz", None),
])
def test_door_of_path(target: str, door: Door | None) -> None:
    assert door_of(target) is door


def test_envoy_door_reads_original_request_and_scope_headers() -> None:
    view = view_from_http(Door.ENVOY, request("/envoy/api/items?id=7&x=%2F", {
        "host": "shop.example", "authorization": "Bearer t", "content-length": "0",
        "x-authz-namespace": "shop", "x-authz-labels": "app=web, tier=front",
        "x-authz-source-address": "192.0.2.7", "x-forwarded-proto": "https",
        "x-authz-destination-address": "10.1.2.3:8443",
        "x-envoy-internal": "true", "x-envoy-expected-rq-timeout-ms": "1000",
        "x-request-id": "r-1",
    }, method="POST"), "default")
    assert (view.method, view.host, view.path, view.query) == (
        "POST", "shop.example", "/api/items", "id=7&x=%2F")
    assert view.scope.namespace == "shop"
    assert dict(view.scope.labels) == {"app": "web", "tier": "front"}
    assert view.source.ip == "192.0.2.7"
    assert (view.destination.ip, view.destination.port) == ("10.1.2.3", 8443)
    assert view.request_id == "r-1"
    assert view.scheme == "https"
    # As Envoy's gRPC CheckRequest has them: pseudo-headers, no host, no control headers.
    assert dict(view.headers) == {
        ":authority": "shop.example", ":method": "POST", ":path": "/api/items?id=7&x=%2F",
        ":scheme": "https", "authorization": "Bearer t", "x-forwarded-proto": "https",
        "x-request-id": "r-1"}


def test_envoy_door_scope_from_xfcc_by_then_default() -> None:
    xfcc = ('By=spiffe://cluster.local/ns/other/sa/x;URI=spiffe://td/ns/a/sa/b,'
            'By=spiffe://cluster.local/ns/payments/sa/api;Hash=abc;'
            'Subject="CN=x,O=y";URI=spiffe://cluster.local/ns/web/sa/frontend')
    view = view_from_http(Door.ENVOY, request("/envoy/", {
        "x-forwarded-client-cert": xfcc}), "default")
    assert view.scope.namespace == "payments"
    assert view.destination.principal == "spiffe://cluster.local/ns/payments/sa/api"
    assert view.source.principal == "spiffe://cluster.local/ns/web/sa/frontend"
    assert view.source.ip == "10.0.0.9"  # no x-authz-source-address: the connection's peer
    assert (view.destination.ip, view.destination.port) == ("", None)
    v6 = view_from_http(Door.ENVOY, request("/envoy/", {
        "x-authz-destination-address": "[::1]:80"}), "default")
    assert (v6.destination.ip, v6.destination.port) == ("::1", 80)
    plain = view_from_http(Door.ENVOY, request("/envoy", {}), "fallback")
    assert plain.scope.namespace == "fallback"
    assert plain.path == "/"


def test_parse_xfcc_quoted_values_and_absence() -> None:
    assert parse_xfcc('By="spiffe://a/ns/b/sa/c";URI="spiffe://x;y"') == (
        "spiffe://a/ns/b/sa/c", "spiffe://x;y")
    assert parse_xfcc("") == ("", "")
    assert parse_xfcc("Hash=1") == ("", "")


def test_nginx_door_original_url_method_and_client() -> None:
    view = view_from_http(Door.NGINX, request("/nginx?namespace=shop&labels=app%3Dweb", {
        "host": "authz.internal", "x-original-url": "https://shop.example/cart?item=1",
        "x-original-method": "DELETE", "x-real-ip": "203.0.113.5",
        "x-forwarded-for": "198.51.100.1, 203.0.113.5", "authorization": "Bearer t",
    }), "default")
    assert (view.method, view.host, view.path, view.query, view.scheme) == (
        "DELETE", "shop.example", "/cart", "item=1", "https")
    assert view.scope.namespace == "shop" and dict(view.scope.labels) == {"app": "web"}
    assert view.source.ip == "203.0.113.5"
    assert "x-original-url" not in view.headers and "host" not in view.headers
    assert view.headers["x-forwarded-for"] == "198.51.100.1, 203.0.113.5"
    assert view.headers[":authority"] == "shop.example"


def test_nginx_door_original_uri_with_host_defaults_to_get() -> None:
    view = view_from_http(Door.NGINX, request("/nginx", {
        "host": "shop.example", "x-original-uri": "/a/b?c=d"}), "default")
    assert (view.method, view.host, view.path, view.query) == ("GET", "shop.example", "/a/b",
                                                               "c=d")
    assert view.scope.namespace == "default"
    assert view.source.ip == "10.0.0.9"


def test_traefik_door_forwarded_headers() -> None:
    view = view_from_http(Door.TRAEFIK, request("/traefik?namespace=shop", {
        "host": "authz:8181", "x-forwarded-method": "PUT", "x-forwarded-proto": "https",
        "x-forwarded-host": "shop.example", "x-forwarded-uri": "/orders/1?x=y",
        "x-forwarded-for": "198.51.100.1, 203.0.113.9",
    }), "default")
    assert (view.method, view.host, view.path, view.query, view.scheme) == (
        "PUT", "shop.example", "/orders/1", "x=y", "https")
    assert view.source.ip == "203.0.113.9"  # what Traefik appended: its direct client
    assert view.scope.namespace == "shop"
    assert "x-forwarded-uri" not in view.headers and "x-forwarded-method" not in view.headers


def test_unreadable_labels_raise_scope_error() -> None:
    with pytest.raises(ScopeError):
        view_from_http(Door.NGINX, request("/nginx?labels=novalue", {}), "default")
    with pytest.raises(ScopeError):
        view_from_http(Door.ENVOY, request("/envoy/x", {"x-authz-labels": "=x"}), "default")


@pytest.mark.parametrize("address", ["127.0.0.1:9000", "127.0.0.1:9090", "nope", "h:99999"])
def test_http_check_address_is_checked(address: str) -> None:
    from authz.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="--http-check-address"):
        Settings(grpc_address="127.0.0.1:9000", http_address="127.0.0.1:9090",
                 http_check_address=address)
    Settings(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0",
             http_check_address="127.0.0.1:0")  # port 0 each: no clash
