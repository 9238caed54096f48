"""What fuzzing found, kept as plain regression tests."""

from __future__ import annotations

import pytest

from authz.authn.keys import parse_jwks
from authz.policy.errors import PolicyError
from authz.policy.load import parse_text


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
