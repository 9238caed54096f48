from __future__ import annotations

import ipaddress

import pytest

from authz.policy import grammar
from authz.rbac import match
from authz.rbac.match import Kind


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("abc", "abc", True),
        ("abc", "abcd", False),
        ("abc", "ABC", False),  # case-sensitive
        ("abc*", "abcdef", True),
        ("abc*", "xabc", False),
        ("*abc", "xxabc", True),
        ("*abc", "abcx", False),
        ("*", "x", True),
        ("*", "", False),  # ".+": empty is not "present"
        ("a*b", "a*b", True),  # a middle "*" is literal
        ("a*b", "axb", False),
        ("*a*", "xa*", True),  # leading "*" wins: suffix "a*"
        ("*a*", "xab", False),
    ],
)
def test_istio_string_forms(pattern: str, text: str, expected: bool) -> None:
    assert match.istio_string(pattern).matches(text) is expected


def test_missing_attribute_never_matches() -> None:
    for m in (match.istio_string("*"), match.header_value("*"), match.exact("a")):
        assert not m.matches(None)


def test_header_star_is_presence_even_when_empty() -> None:
    assert match.header_value("*").kind is Kind.PRESENT
    assert match.header_value("*").matches("")
    assert match.header_value("v*").matches("value")
    assert match.header_value("*ue").matches("value")
    assert not match.header_value("Value").matches("value")


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("example.com", "EXAMPLE.com", True),
        ("Example.COM", "example.com", True),
        ("example.com", "example.com:8080", False),  # the port is kept
        ("example.com:*", "example.com:8080", True),
        ("*.example.com", "API.Example.com", True),
        ("*.example.com", "example.com", False),
        ("prefix.*", "PREFIX.io", True),
        ("*", "", True),  # presence of :authority
    ],
)
def test_hosts_case_insensitive_with_port(pattern: str, host: str, expected: bool) -> None:
    assert match.host(pattern).matches(host) is expected


def test_methods_case_sensitive() -> None:
    assert match.method("GET").matches("GET")
    assert not match.method("GET").matches("get")
    assert match.method("*").matches("PATCH")


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/exact", "/exact", True),
        ("/exact", "/exact/", False),
        ("/prefix/*", "/prefix/a/b", True),
        ("/prefix/*", "/prefix", False),
        ("*/suffix", "/a/suffix", True),
        ("*", "/", True),
        ("/path/template/{*}", "/path/template/abc", True),
        ("/path/template/{*}", "/path/template/a/b", False),  # {*} is one segment
        ("/path/template/{*}", "/path/template/", False),  # and non-empty
        ("/{**}/path/template", "/a/b/c/path/template", True),
        ("/{**}/path/template", "//path/template", True),  # {**} may be empty
        ("/{**}/path/template", "/a/path/templateX", False),
        ("/foo/{*}/bar", "/foo/x=1/bar", False),  # "=" is not in the {*} class
        ("/foo/{*}/bar", "/foo/a~b.c-d_e%20/bar", True),
        # B.7: a trailing "/" stays literal, so /foo/{**}/ needs the slash.
        ("/foo/{**}/", "/foo/bar/", True),
        ("/foo/{**}/", "/foo//", True),
        ("/foo/{**}/", "/foo/bar/baz.txt", False),
        ("/foo/{**}", "/foo/bar/baz.txt", True),
        ("/foo/{**}", "/foo/", True),
        ("/a.b/{*}", "/aXb/c", False),  # literals are escaped
    ],
)
def test_paths_and_templates(pattern: str, path: str, expected: bool) -> None:
    assert match.path(pattern).matches(path) is expected


@pytest.mark.parametrize(
    ("pattern", "identity", "expected"),
    [
        ("cluster.local/ns/foo/sa/bar", "spiffe://cluster.local/ns/foo/sa/bar", True),
        ("cluster.local/ns/foo/sa/bar", "cluster.local/ns/foo/sa/bar", False),
        ("cluster.local/ns/foo/*", "spiffe://cluster.local/ns/foo/sa/x", True),
        ("*/sa/bar", "spiffe://td/ns/foo/sa/bar", True),
        ("*/sa/bar", "other://td/ns/foo/sa/bar", False),  # regex spiffe://.*<v>
        ("*", "anything", True),
    ],
)
def test_principals(pattern: str, identity: str, expected: bool) -> None:
    assert match.principal(pattern).matches(identity) is expected


@pytest.mark.parametrize(
    ("pattern", "identity", "expected"),
    [
        ("foo", "spiffe://cluster.local/ns/foo/sa/bar", True),
        ("foo", "spiffe://cluster.local/ns/foobar/sa/bar", False),
        ("foo-*", "spiffe://td/ns/foo-x/sa/bar", True),
        ("*-prod", "spiffe://td/ns/api-prod/sa/bar", True),
        ("*", "spiffe://td/ns/x/sa/y", True),
        ("a.b", "spiffe://td/ns/aXb/sa/y", False),  # regex-quoted
    ],
)
def test_namespaces(pattern: str, identity: str, expected: bool) -> None:
    assert match.namespace(pattern).matches(identity) is expected


def test_service_accounts() -> None:
    m = match.service_account("my-ns/my-sa", "foo")
    assert m.matches("spiffe://cluster.local/ns/my-ns/sa/my-sa")
    assert not m.matches("spiffe://cluster.local/ns/my-ns/sa/my-sa-2")
    local = match.service_account("sa-only", "foo")
    assert local.matches("spiffe://td/ns/foo/sa/sa-only")
    assert not local.matches("spiffe://td/ns/bar/sa/sa-only")


def test_trust_domains() -> None:
    assert match.trust_domain("cluster.local").matches("spiffe://cluster.local/ns/a/sa/b")
    assert not match.trust_domain("cluster.local").matches("spiffe://cluster.localx/ns/a/sa/b")
    assert match.trust_domain("bad*").matches("spiffe://bad-td/ns/a/sa/b")
    assert not match.trust_domain("bad*").matches("spiffe://good/ns/a/sa/b")
    assert match.trust_domain("*").matches("spiffe://x/ns/a/sa/b")


def test_trust_domain_aliases() -> None:
    bundle = ("td1", "cluster.local", "some-td")
    assert match.principals_with_aliases("cluster.local/ns/n/sa/s", bundle) == [
        "td1/ns/n/sa/s", "cluster.local/ns/n/sa/s", "some-td/ns/n/sa/s"]
    # A domain outside the bundle, "*" and non-SPIFFE forms are kept as written.
    assert match.principals_with_aliases("other/ns/n/sa/s", bundle) == ["other/ns/n/sa/s"]
    assert match.principals_with_aliases("*/ns/n/sa/s", bundle) == ["*/ns/n/sa/s"]
    assert match.principals_with_aliases("principal", bundle) == ["principal"]
    # A wildcard domain that covers a bundle entry is kept for it, replaced for the rest.
    assert match.principals_with_aliases("*-td/ns/foo/sa/x", ("some-trustdomain", "a-td")) == [
        "some-trustdomain/ns/foo/sa/x", "*-td/ns/foo/sa/x"]
    # No bundle: no rewriting.
    assert match.principals_with_aliases("cluster.local/ns/n/sa/s", ()) == [
        "cluster.local/ns/n/sa/s"]
    assert match.trust_domains_with_aliases("td1", bundle) == list(bundle)
    assert match.trust_domains_with_aliases("other", bundle) == ["other"]


@pytest.mark.parametrize(
    ("value", "iss", "sub", "expected"),
    [
        ("*", "i", "s", True),
        ("*", "i", "", False),
        ("https://example.com/*", "https://example.com", "anyone", True),
        ("https://example.com/*", "https://example.com/x", "anyone", False),
        ("https://example.com/sub-*", "https://example.com", "sub-1", True),
        ("*/sub1", "whatever-issuer", "sub1", True),
        ("*/sub1", "i", "sub2", False),
        ("*.example.com/sub1", "https://a.example.com", "sub1", True),
        ("iss/sub", "iss", "sub", True),
        ("a/b/c", "a/b", "c", True),  # split at the last "/"
        ("issuer-prefix-*", "issuer-prefix-1", "s", True),  # no "/": iss prefix, sub .+
        ("issuer-prefix-*", "issuer-prefix-1", "", False),
        ("*-suffix", "i", "x-suffix", True),  # no "/": iss .+, sub suffix
        ("*-suffix", "x-suffix", "s", False),
        ("no-slash", "no-slash", "", True),  # exact iss, sub == "" (sub "" is a string)
        ("no-slash", "no-slash", "s", False),
    ],
)
def test_request_principals(value: str, iss: str, sub: str, expected: bool) -> None:
    assert match.request_principal(value).matches({"iss": iss, "sub": sub}) is expected


def test_request_principals_need_string_claims() -> None:
    m = match.request_principal("*")
    assert not m.matches(None)
    assert not m.matches({"iss": "i"})  # no sub
    assert not m.matches({"iss": "i", "sub": 5})


def test_claims_nested_list_and_types() -> None:
    values = (match.istio_string("admin"), match.istio_string("dev-*"))
    top = match.ClaimMatcher(("groups",), values)
    assert top.matches({"groups": ["x", "admin"]})
    assert top.matches({"groups": "dev-1"})
    assert not top.matches({"groups": ["x", 1]})
    assert not top.matches({})
    assert not top.matches(None)
    nested = match.ClaimMatcher(("a", "b"), values)
    assert nested.matches({"a": {"b": "admin"}})
    assert not nested.matches({"a": "admin"})
    assert not nested.matches({"a": {"c": "admin"}})
    number = match.ClaimMatcher(("iat",), (match.istio_string("1562182722"),))
    assert not number.matches({"iat": 1562182722})  # numbers never match
    assert not match.ClaimMatcher(("ok",), (match.istio_string("true"),)).matches({"ok": True})
    dotted = match.ClaimMatcher(("foo.com/name",), (match.istio_string("x"),))
    assert dotted.matches({"foo.com/name": "x"})


def test_cidr() -> None:
    m = match.cidrs(["10.0.0.0/8", "192.168.1.1", "2001:db8::/32", "172.16.5.4/16"])
    ip = ipaddress.ip_address
    assert m.matches(ip("10.2.3.4"))
    assert m.matches(ip("192.168.1.1"))
    assert not m.matches(ip("192.168.1.2"))
    assert m.matches(ip("2001:db8::1"))
    assert m.matches(ip("172.16.0.1"))  # host bits are masked
    assert not m.matches(ip("::ffff:10.0.0.1"))  # other IP version
    assert not m.matches(None)


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "10.0.0", "fe80::1%eth0", " 10.0.0.1",
                                 "10.0.0.1/x", "010.0.0.1", "10.0.0.0/255.0.0.0", ""])
def test_cidr_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        grammar.parse_cidr(bad)


def test_ports() -> None:
    assert grammar.parse_port("0") == 0
    assert grammar.parse_port("65535") == 65535
    for bad in ("65536", "-1", "+80", " 80", "8_0", "http", ""):
        with pytest.raises(ValueError):
            grammar.parse_port(bad)
