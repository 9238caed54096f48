"""A decision becomes the answer each proxy reads as the gRPC path's answer."""

from __future__ import annotations

import pytest

from authz.decision import Decision, Header, Reason
from authz.http.frontdoors import Door
from authz.http.render import HEADERS_TO_REMOVE, render

ALLOW = Decision.allow(
    Reason.ALLOWED, upstream_headers=(Header("x-user", "alice"), Header("x-payload", "e30")),
    upstream_headers_to_remove=("authorization", "x-spoofable"))


def test_envoy_allow_is_200_with_upstream_headers_and_removals() -> None:
    response = render(ALLOW, Door.ENVOY)
    assert response.status == 200
    assert response.headers == (("x-user", "alice"), ("x-payload", "e30"),
                                (HEADERS_TO_REMOVE, "authorization,x-spoofable"))
    assert response.body == b""


@pytest.mark.parametrize("door", [Door.NGINX, Door.TRAEFIK])
def test_nginx_and_traefik_allow_carry_claim_headers_only(door: Door) -> None:
    response = render(ALLOW, door)
    assert response.status == 200
    assert response.headers == (("x-user", "alice"), ("x-payload", "e30"))


def test_allow_without_mutations_is_bare_200() -> None:
    assert render(Decision.allow(), Door.ENVOY).headers == ()


@pytest.mark.parametrize("door", list(Door))
def test_deny_keeps_status_body_and_www_authenticate(door: Door) -> None:
    decision = Decision.deny(401, "Jwt is expired", Reason.JWT_INVALID, response_headers=(
        Header("www-authenticate", 'Bearer realm="http://x/", error="invalid_token"'),))
    response = render(decision, door)
    assert response.status == 401
    assert response.body == b"Jwt is expired"
    assert response.headers == (
        ("www-authenticate", 'Bearer realm="http://x/", error="invalid_token"'),)
    forbidden = render(Decision.deny(403, "RBAC: access denied", Reason.RBAC_DENIED), door)
    assert (forbidden.status, forbidden.body, forbidden.headers) == (
        403, b"RBAC: access denied", ())
