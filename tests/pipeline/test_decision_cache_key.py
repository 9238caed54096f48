"""What the decision-cache key holds, field by field, and the guard that keeps it whole."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import NamedTuple, get_type_hints

import pytest

from authz.pipeline.decision_cache import (
    KEYED_FIELDS,
    UNKEYED_FIELDS,
    Inputs,
    KeyCoverageError,
    check_key_covers,
    request_key,
    view_fields,
)
from authz.request.scope import Scope
from authz.request.view import Peer, RequestView

BASE = RequestView(
    method="GET", host="a.example", path="/p", query="", scheme="http", sni="",
    headers=MappingProxyType({"x-named": "1", "x-request-id": "r1"}),
    source=Peer("10.0.0.1", 40000, "spiffe://cluster.local/ns/a/sa/a"),
    destination=Peer("10.0.0.2", 8080, "spiffe://cluster.local/ns/b/sa/b"),
    context_extensions=MappingProxyType({}), scope=Scope("foo", MappingProxyType({})),
    protocol="HTTP/1.1", request_id="r1",
)
INPUTS = Inputs(("x-named",))

#: A different value for every field of the view: a new field needs one here as well.
CHANGED: dict[str, object] = {
    "method": "POST", "host": "b.example", "path": "/q", "query": "a=1", "scheme": "https",
    "sni": "b.example", "scope": Scope("bar", MappingProxyType({})),
    "headers": MappingProxyType({"x-named": "2", "x-request-id": "r1"}),
    "source.ip": "10.0.0.9", "source.port": 40001, "source.principal": "spiffe://x/ns/c/sa/c",
    "destination.ip": "10.0.0.8", "destination.port": 8443,
    "destination.principal": "spiffe://x/ns/d/sa/d",
    "context_extensions": MappingProxyType({"anything": "else"}),
    "protocol": "HTTP/2", "request_id": "r2",
    "metadata": MappingProxyType({"envoy.filters.http.jwt_authn": MappingProxyType(
        {"user": "alice"})}),
}


def changed(field: str) -> RequestView:
    value = CHANGED[field]
    name, _, peer_field = field.partition(".")
    if peer_field:
        value = dataclasses.replace(getattr(BASE, name), **{peer_field: value})
    return BASE._replace(**{name: value})


def test_every_view_field_is_keyed_or_deliberately_unkeyed() -> None:
    check_key_covers(view_fields())
    assert view_fields() == KEYED_FIELDS | UNKEYED_FIELDS.keys() == CHANGED.keys()
    assert all(reason for reason in UNKEYED_FIELDS.values())


@pytest.mark.parametrize("field", sorted(KEYED_FIELDS))
def test_a_keyed_field_changes_the_key(field: str) -> None:
    assert request_key(changed(field), INPUTS) != request_key(BASE, INPUTS)


@pytest.mark.parametrize("field", sorted(UNKEYED_FIELDS))
def test_an_unkeyed_field_leaves_the_key_alone(field: str) -> None:
    assert request_key(changed(field), INPUTS) == request_key(BASE, INPUTS)


def test_a_header_no_input_names_leaves_the_key_alone() -> None:
    other = BASE._replace(headers=MappingProxyType({"x-named": "1", "x-request-id": "r9"}))
    assert request_key(other, INPUTS) == request_key(BASE, INPUTS)


# The guard broken on purpose: each of these is a change a developer could make.

def test_a_new_view_field_that_nobody_placed_fails_the_guard() -> None:
    wider = NamedTuple(  # type: ignore[misc]
        "WiderView", [*get_type_hints(RequestView).items(), ("tenant", str)])
    assert "tenant" in view_fields(wider)
    with pytest.raises(KeyCoverageError, match=r"tenant: neither in the decision-cache key"):
        check_key_covers(view_fields(wider))


def test_a_new_peer_field_that_nobody_placed_fails_the_guard() -> None:
    with pytest.raises(KeyCoverageError, match=r"source\.cluster: neither"):
        check_key_covers(view_fields() | {"source.cluster"})


def test_a_field_dropped_from_the_keyed_set_fails_the_guard() -> None:
    with pytest.raises(KeyCoverageError, match=r"sni: neither"):
        check_key_covers(view_fields(), keyed=KEYED_FIELDS - {"sni"})


def test_a_field_both_keyed_and_unkeyed_fails_the_guard() -> None:
    with pytest.raises(KeyCoverageError, match=r"request_id: both keyed and unkeyed"):
        check_key_covers(view_fields(), keyed=KEYED_FIELDS | {"request_id"})


def test_a_field_the_view_no_longer_has_fails_the_guard() -> None:
    with pytest.raises(KeyCoverageError, match=r"protocol: listed, but the request view"):
        check_key_covers(view_fields() - {"protocol"})
