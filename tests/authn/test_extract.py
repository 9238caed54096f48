from __future__ import annotations

from types import MappingProxyType

from authz.authn.extract import (
    Extractor,
    LocationKind,
    RequestParts,
    split_cookies,
    split_query,
    token_after_prefix,
)
from authz.policy.request_authentication import HeaderLocation, JwtRule


def parts(headers: dict[str, str] | None = None, query: str = "") -> RequestParts:
    return RequestParts(MappingProxyType(headers or {}), query)


def test_defaults_when_rule_names_no_location() -> None:
    ex = Extractor([JwtRule("iss-1")])
    found = ex.extract(parts({"authorization": "Bearer a.b.c"}, "access_token=d.e.f"))
    assert [(t.location.kind, t.token) for t in found] == [
        (LocationKind.HEADER, "a.b.c"), (LocationKind.PARAM, "d.e.f")]
    assert all(t.issuers == {"iss-1"} for t in found)


def test_default_prefix_is_case_sensitive_and_basic_is_no_token() -> None:
    ex = Extractor([JwtRule("iss-1")])
    assert ex.extract(parts({"authorization": "bearer a.b.c"})) == ()
    assert ex.extract(parts({"authorization": "Basic dXNlcjpwYXNz"})) == ()


def test_explicit_locations_replace_defaults() -> None:
    rule = JwtRule("iss-1", from_params=("token",))
    found = Extractor([rule]).extract(parts({"authorization": "Bearer a.b.c"}, "access_token=x"))
    assert found == ()


def test_prefix_searched_anywhere_then_skip_to_token_chars() -> None:
    assert token_after_prefix("xx Value   a.b.c", "Value ") == "a.b.c"
    assert token_after_prefix('Token: "a.b.c', "Token:") == "a.b.c"
    assert token_after_prefix("nothing here", "Value ") is None
    assert token_after_prefix("whole.value", "") == "whole.value"


def test_custom_header_with_prefix_and_repeated_values() -> None:
    rule = JwtRule("iss-1", from_headers=(HeaderLocation("x-jwt-token", "Value "),))
    found = Extractor([rule]).extract(parts({"x-jwt-token": "Value a.b.c,Value d.e.f"}))
    assert [t.token for t in found] == ["a.b.c", "d.e.f"]


def test_params_first_occurrence_and_decoded() -> None:
    q = split_query("token=a%2Eb.c&token=zzz&x&secondary_token=d.e.f")
    assert q["token"] == "a.b.c" and q["x"] == "" and q["secondary_token"] == "d.e.f"


def test_cookies() -> None:
    c = split_cookies('a=1; session="x.y.z"; a=2')
    assert c == {"a": "1", "session": "x.y.z"}
    rule = JwtRule("iss-1", from_cookies=("session",))
    found = Extractor([rule]).extract(parts({"cookie": 'a=1; session="x.y.z"'}))
    assert [(t.location.kind, t.token) for t in found] == [(LocationKind.COOKIE, "x.y.z")]


def test_locations_remember_declaring_issuers_and_order() -> None:
    r1 = JwtRule("iss-1", from_headers=(HeaderLocation("b-hdr"),), from_params=("p",))
    r2 = JwtRule("iss-2", from_headers=(HeaderLocation("a-hdr"), HeaderLocation("b-hdr")),
                 from_cookies=("c",))
    ex = Extractor([r1, r2])
    found = ex.extract(parts({"a-hdr": "1.1.1", "b-hdr": "2.2.2", "cookie": "c=3.3.3"},
                             "p=4.4.4"))
    assert [t.token for t in found] == ["1.1.1", "2.2.2", "4.4.4", "3.3.3"]
    assert [sorted(t.issuers) for t in found] == [
        ["iss-2"], ["iss-1", "iss-2"], ["iss-1"], ["iss-2"]]


def test_token_never_in_repr() -> None:
    (tok,) = Extractor([JwtRule("i")]).extract(parts({"authorization": "Bearer sec.ret.tok"}))
    assert "sec.ret.tok" not in repr(tok)
