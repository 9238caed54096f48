"""A decision becomes the answer each proxy reads as the gRPC path's answer."""

from __future__ import annotations

import pytest

from authz.decision import Decision, Header, Reason
from authz.http.frontdoors import Door
from authz.http.protocol import HttpResponse, encode_response, prepared
from authz.http.render import HEADERS_TO_REMOVE, echoed, render, with_echo

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
    # nginx never reads an auth subrequest's body (it shows its own error page) and
    # closes a connection whose answer had one: /nginx answers with none.
    nginx = door is Door.NGINX
    assert response.status == 401
    assert response.body == (b"" if nginx else b"Jwt is expired")
    assert response.headers == (
        ("www-authenticate", 'Bearer realm="http://x/", error="invalid_token"'),)
    forbidden = render(Decision.deny(403, "RBAC: access denied", Reason.RBAC_DENIED), door)
    assert (forbidden.status, forbidden.body, forbidden.headers) == (
        403, b"" if nginx else b"RBAC: access denied", ())


TOKENS = ("authorization", "x-token")


def wire_fields(wire: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Status line, header lines in any order (the echo follows content-length), body."""
    head, _, body = wire.partition(b"\r\n\r\n")
    status, *fields = head.split(b"\r\n")
    return status, sorted(fields), body


def test_echo_keeps_the_token_headers_the_decision_keeps_and_only_those() -> None:
    sent = {"authorization": "Basic YTpi", "x-token": "Bearer t", "x-other": "v"}
    assert echoed(Decision.allow(), sent, TOKENS) == (
        ("authorization", "Basic YTpi"), ("x-token", "Bearer t"))
    removed = Decision.allow(upstream_headers_to_remove=("x-token",))
    assert echoed(removed, sent, TOKENS) == (("authorization", "Basic YTpi"),)
    # Set by the decision (a claim written to a token header): the answer has it already.
    written = Decision.allow(upstream_headers=(Header("authorization", "claim"),))
    assert echoed(written, sent, TOKENS) == (("x-token", "Bearer t"),)
    # Never a header the client did not send.
    assert echoed(Decision.allow(), {"x-other": "v"}, TOKENS) == ()


def test_a_deny_echoes_nothing() -> None:
    denied = Decision.deny(403, "RBAC: access denied", Reason.RBAC_DENIED)
    assert echoed(denied, {"authorization": "Basic YTpi"}, TOKENS) == ()


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\x00b", "a\x7f"])
def test_a_value_no_header_may_carry_is_not_echoed(value: str) -> None:
    assert echoed(Decision.allow(), {"authorization": value, "x-token": "ok"}, TOKENS) == (
        ("x-token", "ok"),)


def test_echo_extends_a_memoized_answer_without_changing_it() -> None:
    memoized = prepared(render(ALLOW, Door.NGINX))
    echo = (("authorization", "Basic YTpi"),)
    answer = with_echo(memoized, echo)
    assert answer.headers == (("x-user", "alice"), ("x-payload", "e30"),
                              ("authorization", "Basic YTpi"))
    assert wire_fields(answer.wire) == wire_fields(encode_response(answer, close=False))
    assert memoized.headers == (("x-user", "alice"), ("x-payload", "e30"))
    assert with_echo(memoized, ()) is memoized
    # An answer not encoded in advance gets its headers only (encoded when written).
    plain = with_echo(HttpResponse(200), echo)
    assert (plain.headers, plain.wire) == (echo, b"")
    body = with_echo(prepared(HttpResponse(200, (), b"body")), echo)
    assert wire_fields(body.wire) == wire_fields(encode_response(body, close=False))
    assert body.wire.endswith(b"\r\n\r\nbody")
