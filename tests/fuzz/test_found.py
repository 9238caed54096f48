"""What fuzzing found, kept as plain regression tests."""

from __future__ import annotations

import pytest

from authz.authn.keys import parse_jwks
from authz.http.protocol import MAX_HEADER_BYTES
from authz.policy.errors import PolicyError
from authz.policy.load import parse_text
from tests.fuzz.test_fuzz_http import run


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
