"""What fuzzing found, kept as plain regression tests."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from authz.authn.keys import parse_jwks
from authz.http.frontdoors import Door, view_from_http
from authz.http.protocol import MAX_HEADER_BYTES, HttpRequest
from authz.policy.errors import PolicyError
from authz.policy.load import parse_text
from tests.fuzz.test_fuzz_http import SERVICE, run


@pytest.mark.parametrize("text", [
    "\x1f",                      # a control character: yaml ReaderError, no mark
    "!0",                        # an unknown tag: ConstructorError while building data
    "&a [*a]",                   # an alias inside itself: endless recursion
    "a: " + "[" * 5_000 + "]" * 5_000,
])
def test_bad_yaml_is_a_policy_error_with_a_place(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_text(text, "p.yaml")
    assert "invalid YAML" in str(info.value) and "p.yaml" in str(info.value)


def test_deeply_nested_jwks_is_a_failed_set_not_an_exception() -> None:
    keys = parse_jwks('{"keys":' + "[" * 5_000 + "]" * 5_000 + "}")
    assert not keys.keys and keys.error


def test_a_header_line_that_never_ends_is_refused_at_the_limit() -> None:
    """httptools keeps an unfinished header line without bound and reports it only
    once it ends: a client sending one endless header value, a read at a time, was
    held in memory (no 431) until the header timeout."""
    head = b"GET /envoy/x HTTP/1.1\r\nx-big: "
    stream = head + b"v" * (3 * MAX_HEADER_BYTES)
    reads = list(range(len(head), len(stream), 4096))
    _, transport, open_after = run(stream, reads, False)
    assert transport.out.startswith(b"HTTP/1.1 431 ")
    closed_at = open_after.index(False)
    assert reads[closed_at] <= len(head) + MAX_HEADER_BYTES + 4096


@pytest.mark.parametrize("url", ["http://[::1/admin", "http://h]/admin?x=1", "//[/admin"])
def test_an_x_original_url_urlsplit_refuses_is_decided_on_its_path(url: str) -> None:
    """``urlsplit`` raises ValueError on an unclosed IPv6 bracket: /nginx answered 500
    (an internal error) instead of deciding; the path still meets its policies."""
    request = HttpRequest("GET", "/nginx", MappingProxyType({"x-original-url": url}),
                          "10.1.2.3", None)
    view = view_from_http(Door.NGINX, request, "default")
    assert view.path == "/admin"
    assert SERVICE.check_http(request).status == 403  # a DENY on /admin*, not a 500
