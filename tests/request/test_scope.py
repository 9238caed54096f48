from __future__ import annotations

import pytest

from authz.request.scope import (
    Scope,
    ScopeError,
    namespace_from_spiffe,
    parse_labels,
    resolve_scope,
)


@pytest.mark.parametrize(
    ("text", "labels"),
    [("", {}), ("app=a", {"app": "a"}), (" app = a , v=2 ,", {"app": "a", "v": "2"}),
     ("k=", {"k": ""}), ("a=b=c", {"a": "b=c"})],
)
def test_parse_labels(text: str, labels: dict[str, str]) -> None:
    assert dict(parse_labels(text)) == labels


@pytest.mark.parametrize("text", ["app", "=v", "a=1,b"])
def test_bad_labels_are_errors(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_labels(text)


@pytest.mark.parametrize(
    ("principal", "ns"),
    [("spiffe://cluster.local/ns/foo/sa/bar", "foo"), ("spiffe://td/ns//sa/x", None),
     ("spiffe://td/x/foo/sa/bar", None), ("cluster.local/ns/foo/sa/bar", None), ("", None)],
)
def test_namespace_from_spiffe(principal: str, ns: str | None) -> None:
    assert namespace_from_spiffe(principal) == ns


def test_resolve_scope_precedence() -> None:
    spiffe = "spiffe://td/ns/from-peer/sa/x"
    assert resolve_scope({"namespace": "ext"}, spiffe, "d") == Scope("ext")
    assert resolve_scope({}, spiffe, "d") == Scope("from-peer")
    assert resolve_scope({"namespace": "  "}, "", "d") == Scope("d")
    assert str(resolve_scope({"labels": "b=2,a=1"}, "", "d")) == "d[a=1,b=2]"


def test_equal_scopes_share_a_key_and_labels_order_does_not_matter() -> None:
    a = resolve_scope({"namespace": "shop", "labels": "app=a,tier=web"}, "", "d")
    b = resolve_scope({"namespace": "shop", "labels": "tier=web, app=a"}, "", "d")
    assert a.key == b.key == ("shop", (("app", "a"), ("tier", "web")))
    assert resolve_scope({"namespace": "shop", "labels": "app=b"}, "", "d").key != a.key


def test_a_bad_scope_is_refused_every_time_not_only_the_first() -> None:
    for _ in range(2):  # resolved scopes are cached; refusals must not be
        with pytest.raises(ScopeError):
            resolve_scope({"namespace": "shop", "labels": "app"}, "", "d")
