"""Compiled value matchers: each Istio policy string becomes what Envoy would run.

Istio translates every policy value into an Envoy ``StringMatcher``, header
matcher, CIDR range or metadata matcher (reference B.3, B.6 to B.9). The classes
here are those matchers, built once when policies load. Matching is plain
string comparison or a regex compiled at build time; nothing is parsed per
request.

The regex forms are matched with ``fullmatch`` because Envoy's ``safe_regex``
is a full match (RE2), and ``.`` does not match a newline in either engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from authz.policy.grammar import (
    MATCH_ANY_TEMPLATE,
    MATCH_ONE_TEMPLATE,
    Network,
    is_path_template,
    parse_cidr,
)
from authz.request.address import IPAddress

__all__ = [
    "CidrMatcher",
    "ClaimMatcher",
    "Kind",
    "RequestPrincipalMatcher",
    "StringMatcher",
    "cidrs",
    "exact",
    "header_value",
    "host",
    "istio_string",
    "method",
    "namespace",
    "path",
    "path_template_regex",
    "prefix",
    "principal",
    "principals_with_aliases",
    "regex",
    "request_principal",
    "service_account",
    "suffix",
    "trust_domain",
    "trust_domains_with_aliases",
]

SPIFFE = "spiffe://"
LOCAL_TRUST_DOMAIN = "cluster.local"
"""Istio treats this literal as "the local trust domain" when aliases are set (B.9)."""

# Envoy uri_template character classes (reference B.7, envoy-uritpl).
_TEMPLATE_ONE = r"[a-zA-Z0-9\-._~%!$&'()+,;:@]+"
_TEMPLATE_ANY = r"[a-zA-Z0-9\-._~%!$&'()+,;:@/]*"


class Kind(Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENT = "present"
    """Envoy header ``present_match``: the header exists, even with an empty value."""
    NON_EMPTY = "non_empty"
    """Istio's ``*`` as a string matcher: regex ``.+`` (a missing value fails)."""
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class StringMatcher:
    """One Envoy string/header matcher. ``None`` (attribute absent) never matches."""

    kind: Kind
    value: str = ""
    ignore_case: bool = False
    pattern: re.Pattern[str] | None = field(default=None, compare=False)

    def matches(self, text: str | None) -> bool:
        if text is None:
            return False
        kind = self.kind
        if kind is Kind.PRESENT:
            return True
        if kind is Kind.NON_EMPTY:
            return text != "" and "\n" not in text
        if kind is Kind.REGEX:
            return self.pattern is not None and self.pattern.fullmatch(text) is not None
        if self.ignore_case:
            text = text.lower()
        if kind is Kind.EXACT:
            return text == self.value
        if kind is Kind.PREFIX:
            return text.startswith(self.value)
        return text.endswith(self.value)

    def __str__(self) -> str:
        if self.kind in (Kind.PRESENT, Kind.NON_EMPTY):
            return f"{self.kind.value}"
        return f"{self.kind.value}:{self.value}" + (" (ignore case)" if self.ignore_case else "")


def exact(value: str, ignore_case: bool = False) -> StringMatcher:
    return StringMatcher(Kind.EXACT, value.lower() if ignore_case else value, ignore_case)


def prefix(value: str, ignore_case: bool = False) -> StringMatcher:
    return StringMatcher(Kind.PREFIX, value.lower() if ignore_case else value, ignore_case)


def suffix(value: str, ignore_case: bool = False) -> StringMatcher:
    return StringMatcher(Kind.SUFFIX, value.lower() if ignore_case else value, ignore_case)


def regex(expression: str) -> StringMatcher:
    return StringMatcher(Kind.REGEX, expression, pattern=re.compile(expression))


PRESENT = StringMatcher(Kind.PRESENT)
NON_EMPTY = StringMatcher(Kind.NON_EMPTY)


def istio_string(value: str, prefix_text: str = "") -> StringMatcher:
    """Istio's generic string form (``StringMatcherWithPrefix``).

    ``*`` -> ``.+``; ``*x`` -> suffix (regex ``<prefix>.*x`` when a prefix is
    prepended); ``x*`` -> prefix; else exact. Only one leading or trailing ``*``
    is special, and the leading one is checked first, so ``*a*`` is a suffix
    match on ``a*``.
    """
    if value == "*":
        return NON_EMPTY
    if value.startswith("*"):
        if not prefix_text:
            return suffix(value[1:])
        return regex(re.escape(prefix_text) + ".*" + re.escape(value[1:]))
    if value.endswith("*"):
        return prefix(prefix_text + value[:-1])
    return exact(prefix_text + value)


def header_value(value: str, ignore_case: bool = False) -> StringMatcher:
    """Istio's ``HeaderMatcher``: like :func:`istio_string` but ``*`` is ``present_match``."""
    if value == "*":
        return PRESENT
    if value.startswith("*"):
        return suffix(value[1:], ignore_case)
    if value.endswith("*"):
        return prefix(value[:-1], ignore_case)
    return exact(value, ignore_case)


def host(value: str) -> StringMatcher:
    """``hosts``: the ``:authority`` header as sent, port included, case-insensitive."""
    return header_value(value, ignore_case=True)


def method(value: str) -> StringMatcher:
    """``methods``: a header matcher on ``:method`` (case-sensitive)."""
    return header_value(value)


def path_template_regex(template: str) -> str:
    """An Envoy ``uri_template`` as the regex Envoy builds for it (B.7).

    ``{*}`` is one non-empty segment without ``/``, ``{**}`` is zero or more
    characters including ``/``; literal segments are escaped and a trailing ``/``
    stays literal. The caller validated the template first.
    """
    out: list[str] = []
    for segment in template.split("/"):
        if segment == MATCH_ONE_TEMPLATE:
            out.append(_TEMPLATE_ONE)
        elif segment == MATCH_ANY_TEMPLATE:
            out.append(_TEMPLATE_ANY)
        else:
            out.append(re.escape(segment))
    return "/".join(out)


def path(value: str) -> StringMatcher:
    """``paths``: Envoy ``url_path`` (no query) or a ``uri_template`` full match."""
    if is_path_template(value):
        return regex(path_template_regex(value))
    return istio_string(value)


def principal(value: str) -> StringMatcher:
    """``principals`` / ``source.principal``: the value without ``spiffe://``."""
    return istio_string(value, SPIFFE)


def namespace(value: str) -> StringMatcher:
    """``namespaces`` / ``source.namespace``: regex ``.*/ns/<ns>/.*``, ``*`` -> ``.*``."""
    body = ".*".join(re.escape(part) for part in value.split("*"))
    return regex(f".*/ns/{body}/.*")


def service_account(value: str, policy_namespace: str) -> StringMatcher:
    """``serviceAccounts``: ``ns/sa``, or ``sa`` in the policy's own namespace."""
    ns, _, sa = value.rpartition("/")
    ns = ns or policy_namespace
    return regex(f"spiffe://.+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(sa)}(/.+)?")


def trust_domain(value: str) -> StringMatcher:
    """``trustDomains``: ``*`` any SPIFFE id; ``td`` -> prefix ``spiffe://td/``;
    one ``*`` inside -> regex ``spiffe://<pre>[^/]*<post>/.*``."""
    if value == "*":
        return prefix(SPIFFE)
    if "*" not in value:
        return prefix(f"{SPIFFE}{value}/")
    pre, _, post = value.partition("*")
    return regex(f"{re.escape(SPIFFE + pre)}[^/]*{re.escape(post)}/.*")


# --- trust-domain aliases (B.9) ---------------------------------------------


def _pattern_matches(pattern: str, text: str) -> bool:
    """Istio's trust-domain ``stringMatch``: ``*``, ``*x``, ``x*`` or exact."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return text.endswith(pattern[1:])
    if pattern.endswith("*"):
        return text.startswith(pattern[:-1])
    return text == pattern


def _in_bundle(domain: str, bundle: Sequence[str]) -> bool:
    return domain == LOCAL_TRUST_DOMAIN or any(_pattern_matches(domain, td) for td in bundle)


def _expand(domain: str, bundle: Sequence[str]) -> list[str]:
    """One trust domain per bundle entry; a wildcard domain that already covers
    an entry is kept as written instead of being replaced by it."""
    out: list[str] = []
    for td in bundle:
        chosen = domain if "*" in domain and _pattern_matches(domain, td) else td
        if chosen not in out:
            out.append(chosen)
    return out


def principals_with_aliases(value: str, bundle: Sequence[str]) -> list[str]:
    """``<td>/ns/<ns>/sa/<sa>`` in the local trust domain, an alias or
    ``cluster.local`` -> one copy per domain of the bundle; anything else as written."""
    if not bundle:
        return [value]
    parts = value.split("/")
    if len(parts) != 5 or parts[0] == "*" or value == "*":
        return [value]
    domain, rest = parts[0], "/".join(parts[1:])
    if not _in_bundle(domain, bundle):
        return [value]
    return [f"{td}/{rest}" for td in _expand(domain, bundle)]


def trust_domains_with_aliases(value: str, bundle: Sequence[str]) -> list[str]:
    """A ``trustDomains`` value naming the local domain or an alias -> every bundle domain."""
    if not bundle or value == "*" or not _in_bundle(value, bundle):
        return [value]
    return _expand(value, bundle)


# --- request principals, claims, CIDRs ----------------------------------------


@dataclass(frozen=True, slots=True)
class RequestPrincipalMatcher:
    """``iss/sub`` of a verified JWT (B.6): both claims must be strings that match."""

    iss: StringMatcher
    sub: StringMatcher

    def matches(self, claims: Mapping[str, Any] | None) -> bool:
        if claims is None:
            return False
        iss, sub = claims.get("iss"), claims.get("sub")
        if not isinstance(iss, str) or not isinstance(sub, str):
            return False
        return self.iss.matches(iss) and self.sub.matches(sub)

    def __str__(self) -> str:
        return f"iss {self.iss} and sub {self.sub}"


def request_principal(value: str) -> RequestPrincipalMatcher:
    """Istio's ``extendedPrincipal`` split at the last ``/`` (B.6)."""
    iss, slash, sub = value.rpartition("/")
    found = bool(slash)
    if not found:
        iss, sub = value, ""
    if value == "*":
        return RequestPrincipalMatcher(NON_EMPTY, NON_EMPTY)
    if value.startswith("*"):
        if found:
            iss_m = NON_EMPTY if iss == "*" else suffix(iss[1:])
            return RequestPrincipalMatcher(iss_m, exact(sub))
        return RequestPrincipalMatcher(NON_EMPTY, suffix(value[1:]))
    if value.endswith("*"):
        if found:
            sub_m = NON_EMPTY if sub == "*" else prefix(sub[:-1])
            return RequestPrincipalMatcher(exact(iss), sub_m)
        return RequestPrincipalMatcher(prefix(value[:-1]), NON_EMPTY)
    return RequestPrincipalMatcher(exact(iss), exact(sub))


@dataclass(frozen=True, slots=True)
class ClaimMatcher:
    """A JWT claim at a nested path (B.8): a string that matches, or a list with
    a string element that matches. Numbers, booleans and objects never match."""

    path: tuple[str, ...]
    values: tuple[StringMatcher, ...]

    def lookup(self, claims: Mapping[str, Any] | None) -> Any:
        node: Any = claims
        for key in self.path:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return node

    def matches(self, claims: Mapping[str, Any] | None) -> bool:
        value = self.lookup(claims)
        if isinstance(value, str):
            return any(m.matches(value) for m in self.values)
        if isinstance(value, list | tuple):
            return any(
                isinstance(item, str) and any(m.matches(item) for m in self.values)
                for item in value
            )
        return False

    def __str__(self) -> str:
        return f"claims{''.join(f'[{k}]' for k in self.path)} in {[str(v) for v in self.values]}"


@dataclass(frozen=True, slots=True)
class CidrMatcher:
    """Any of a set of ranges; an address of the other IP version never matches."""

    networks: tuple[Network, ...]

    def matches(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self.networks)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)


def cidrs(values: Sequence[str]) -> CidrMatcher:
    return CidrMatcher(tuple(parse_cidr(v) for v in values))
