from __future__ import annotations

import pytest

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.envoy.request_view import view_from_check_request
from authz.request.address import original_client_ip


def _view(xff: str | None, peer: str = "10.0.0.1") -> object:
    req = external_auth_pb2.CheckRequest()
    req.attributes.source.address.socket_address.address = peer
    if xff is not None:
        req.attributes.request.http.headers["x-forwarded-for"] = xff
    return view_from_check_request(req, "d")


@pytest.mark.parametrize(
    ("xff", "hops", "expected"),
    [
        (None, 0, "10.0.0.1"),
        ("", 0, "10.0.0.1"),
        ("1.2.3.4", 0, "1.2.3.4"),
        ("1.2.3.4, 5.6.7.8", 0, "5.6.7.8"),  # rightmost with no trusted hop
        ("1.2.3.4, 5.6.7.8", 1, "1.2.3.4"),
        ("1.2.3.4, 5.6.7.8", 2, "10.0.0.1"),  # not enough entries: the peer
        ("1.2.3.4,garbage", 0, "10.0.0.1"),  # not an IP: the peer
        ("2001:db8::1", 0, "2001:db8::1"),
    ],
)
def test_original_client_ip(xff: str | None, hops: int, expected: str) -> None:
    assert original_client_ip(_view(xff), hops) == expected  # type: ignore[arg-type]
