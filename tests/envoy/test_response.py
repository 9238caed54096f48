from __future__ import annotations

from types import MappingProxyType

from authz._proto.envoy.config.core.v3 import base_pb2
from authz._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from authz.decision import Decision, Header, Reason
from authz.envoy.response import check_response, response_bytes
from authz.memo import IdentityMemo


def test_allow_is_ok_http_response_with_mutations() -> None:
    resp = check_response(
        Decision.allow(
            Reason.ALLOWED,
            upstream_headers=(Header("x-jwt-sub", "alice"), Header("x-multi", "b", append=True)),
            upstream_headers_to_remove=("authorization",),
            query_parameters_to_remove=("access_token",),
            response_headers=(Header("x-served-by", "authz"),),
            dynamic_metadata={"payload": {"sub": "alice"}},
        )
    )
    assert resp.status.code == 0
    ok = resp.ok_response
    assert [(h.header.key, h.header.value) for h in ok.headers] == [
        ("x-jwt-sub", "alice"), ("x-multi", "b")]
    assert ok.headers[0].append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert ok.headers[1].append_action == base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
    assert list(ok.headers_to_remove) == ["authorization"]
    assert list(ok.query_parameters_to_remove) == ["access_token"]
    assert ok.response_headers_to_add[0].header.key == "x-served-by"
    assert resp.dynamic_metadata["payload"]["sub"] == "alice"


def test_metadata_from_readonly_claims_converts() -> None:
    from types import MappingProxyType

    claims = MappingProxyType({"sub": "a", "scope": ("read", "write"), "exp": 17,
                               "nested": MappingProxyType({"ok": True, "n": None})})
    resp = check_response(Decision.allow(Reason.ALLOWED, dynamic_metadata={"payload": claims}))
    payload = resp.dynamic_metadata["payload"]
    assert list(payload["scope"]) == ["read", "write"]
    assert payload["exp"] == 17 and payload["nested"]["ok"] is True


def test_plain_allow_still_sets_ok_response() -> None:
    resp = check_response(Decision.allow())
    assert resp.WhichOneof("http_response") == "ok_response"
    assert not resp.HasField("dynamic_metadata")


def test_deny_is_denied_http_response_with_status_body_headers() -> None:
    resp = check_response(
        Decision.deny(
            401, "Jwt is expired", Reason.JWT_INVALID,
            response_headers=(Header("www-authenticate", 'Bearer realm="x"'),),
        )
    )
    assert resp.status.code == 7  # PERMISSION_DENIED: any non-OK code denies
    denied = resp.denied_response
    assert denied.status.code == 401
    assert denied.body == "Jwt is expired"
    assert denied.headers[0].header.value == 'Bearer realm="x"'


def test_deny_status_must_be_an_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="HTTP error"):
        Decision.deny(200, "", Reason.RBAC_DENIED)


def test_metadata_struct_from_read_only_mappings_and_tuples() -> None:
    payload = MappingProxyType({"payload": MappingProxyType({"sub": "a", "n": 1,
                                                             "groups": ("x", "y")})})
    first = check_response(Decision.allow(Reason.ALLOWED, dynamic_metadata=payload))
    second = check_response(Decision.allow(Reason.ALLOWED, dynamic_metadata=payload))
    assert first.dynamic_metadata == second.dynamic_metadata
    assert first.dynamic_metadata["payload"]["groups"] == ["x", "y"]
    # A different mapping with other content is not served from the memo.
    other = MappingProxyType({"payload": MappingProxyType({"sub": "b"})})
    third = check_response(Decision.allow(Reason.ALLOWED, dynamic_metadata=other))
    assert third.dynamic_metadata["payload"]["sub"] == "b"


def test_a_repeated_decision_reuses_its_serialized_response_a_different_one_does_not(
) -> None:
    allow = Decision.allow(Reason.ALLOWED, upstream_headers=(Header("x-user", "alice"),))
    deny = Decision.deny(403, "RBAC: access denied", Reason.RBAC_DENIED)
    memo: IdentityMemo[bytes] = IdentityMemo(8)
    first = response_bytes(allow, memo)
    assert response_bytes(allow, memo) is first
    assert response_bytes(allow) is not first and response_bytes(allow) == first  # no memo
    other = response_bytes(Decision.allow(Reason.ALLOWED), memo)
    assert other is not first and len(memo) == 2
    assert not CheckResponse.FromString(other).ok_response.headers
    assert CheckResponse.FromString(response_bytes(deny)).denied_response.status.code == 403
    assert CheckResponse.FromString(first).ok_response.headers[0].header.value == "alice"


def test_the_bytes_are_the_response_serialized() -> None:
    claims = MappingProxyType({"payload": MappingProxyType({"sub": "a", "groups": ("x",)})})
    for decision in (
        Decision.allow(Reason.ALLOWED, upstream_headers=(Header("x-user", "alice"),),
                       dynamic_metadata=claims),
        Decision.deny(401, "Jwt is expired", Reason.JWT_INVALID,
                      response_headers=(Header("www-authenticate", 'Bearer realm="x"'),)),
    ):
        assert CheckResponse.FromString(response_bytes(decision)) == check_response(decision)


def test_metadata_struct_equals_protobufs_own_conversion() -> None:
    from collections.abc import Mapping
    from typing import Any

    from google.protobuf import struct_pb2

    def plain(value: Any) -> Any:  # what Struct.update accepts
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        return float(value)

    claims = MappingProxyType({
        "iss": "i", "sub": "s", "exp": 1_900_000_000, "ratio": 0.5, "admin": True,
        "none": None, "groups": ("a", "b"), "empty_list": (), "empty_obj": {},
        "nested": MappingProxyType({"deep": {"x": [1, {"y": False}]}}),
    })
    expected = struct_pb2.Struct()
    expected.update({"payload": plain(claims)})
    got = check_response(Decision.allow(dynamic_metadata=MappingProxyType({"payload": claims})))
    assert got.dynamic_metadata == expected
