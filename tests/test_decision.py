"""Decisions are shared values: memoized per outcome, cached per request key."""

from __future__ import annotations

import pytest

from authz.decision import Decision, Reason


def test_a_decision_is_immutable() -> None:
    decision = Decision.allow(Reason.ALLOWED, principal="iss/sub")
    with pytest.raises(AttributeError):
        decision.allowed = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        decision.dynamic_metadata["x"] = 1  # type: ignore[index]


def test_deny_takes_only_http_error_codes() -> None:
    assert Decision.deny(403, "RBAC: access denied", Reason.RBAC_DENIED).status == 403
    with pytest.raises(ValueError, match="HTTP error code"):
        Decision.deny(200, "", Reason.RBAC_DENIED)
