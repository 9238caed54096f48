"""Where tokens are found in a request (reference A.3, Envoy ``extractor.cc``).

- A rule that names no location gets Envoy's defaults: header ``Authorization``
  with prefix ``Bearer `` (case-sensitive) and query parameter ``access_token``.
- A header prefix is searched *anywhere* in the value; a value without it is
  "no token" (not an invalid one). After the prefix, the token starts at the
  first base64url character or ``.`` and runs to the end of the value.
- Query parameters: the first occurrence of each name, percent-decoded.
- Cookies: the first cookie of that name; surrounding double quotes removed.
- Each location remembers which issuers declared it, so a token whose ``iss``
  did not declare the location it was found at fails (``JwtUnknownIssuer``).
- Order: header locations sorted by name+prefix, then params, then cookies,
  each sorted by name. Verification walks this list from the end.

Envoy sees every value of a repeated header; the request view joins them with
``,``, so header values are split on ``,`` again (base64url tokens never
contain a comma).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from urllib.parse import unquote

from authz.policy.request_authentication import JwtRule

__all__ = [
    "ExtractedToken", "Extractor", "LocationKind", "RequestParts", "TokenLocation",
    "split_cookies", "split_query", "token_after_prefix",
]

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


class LocationKind(StrEnum):
    HEADER = "header"
    PARAM = "param"
    COOKIE = "cookie"


@dataclass(frozen=True, slots=True)
class TokenLocation:
    kind: LocationKind
    name: str
    """Lower-cased for headers; exact for params and cookies."""
    prefix: str = ""
    key: tuple[str, str, str] = field(init=False, compare=False, repr=False)
    """The same three as plain strings: a memo key of a token's outcome that holds no
    tracked object, so the cycle collector drops it from view (``authz/memo.py``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.kind.value, self.name, self.prefix))

    def __str__(self) -> str:
        if self.kind is LocationKind.HEADER and self.prefix:
            return f"header {self.name} (prefix {self.prefix!r})"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class ExtractedToken:
    """A token and where it was found. ``token`` is a credential: never log it."""

    token: str = field(repr=False)
    location: TokenLocation
    issuers: frozenset[str]
    """Issuers of the rules that declared this location."""

    def issuer_allowed(self, iss: str) -> bool:
        return iss in self.issuers


def split_query(query: str) -> Mapping[str, str]:
    """First occurrence of each parameter, names and values percent-decoded."""
    found: dict[str, str] = {}
    if not query:
        return MappingProxyType(found)
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = unquote(name)
        if name not in found:
            found[name] = unquote(value)
    return MappingProxyType(found)


def split_cookies(header: str) -> Mapping[str, str]:
    """First cookie of each name from a (possibly ``; ``-joined) Cookie header."""
    found: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        found.setdefault(name.strip(), value)
    return MappingProxyType(found)


def token_after_prefix(value: str, prefix: str) -> str | None:
    """Envoy's prefix search. None: prefix absent, so this value holds no token."""
    if not prefix:
        return value
    pos = value.find(prefix)
    if pos < 0:
        return None
    start = pos + len(prefix)
    for i in range(start, len(value)):
        if value[i] in _TOKEN_CHARS:
            return value[i:]
    return value[start:]


class RequestParts:
    """The request's headers, query and cookies, each parsed at most once."""

    __slots__ = ("_cookies", "_params", "headers", "query")

    def __init__(self, headers: Mapping[str, str], query: str) -> None:
        self.headers = headers
        self.query = query
        self._params: Mapping[str, str] | None = None
        self._cookies: Mapping[str, str] | None = None

    @property
    def params(self) -> Mapping[str, str]:
        if self._params is None:
            self._params = split_query(self.query)
        return self._params

    @property
    def cookies(self) -> Mapping[str, str]:
        if self._cookies is None:
            self._cookies = split_cookies(self.headers.get("cookie", ""))
        return self._cookies


class Extractor:
    """The token locations of a group of rules (one rule, or all rules in scope)."""

    __slots__ = ("cookies", "headers", "params")

    def __init__(self, rules: Iterable[JwtRule]) -> None:
        headers: dict[tuple[str, str], set[str]] = {}
        params: dict[str, set[str]] = {}
        cookies: dict[str, set[str]] = {}
        for rule in rules:
            for loc in rule.header_locations:
                headers.setdefault((loc.name.lower(), loc.prefix), set()).add(rule.issuer)
            for name in rule.param_locations:
                params.setdefault(name, set()).add(rule.issuer)
            for name in rule.from_cookies:
                cookies.setdefault(name, set()).add(rule.issuer)
        self.headers: tuple[tuple[TokenLocation, frozenset[str]], ...] = tuple(
            (TokenLocation(LocationKind.HEADER, name, prefix), frozenset(issuers))
            for (name, prefix), issuers in sorted(headers.items(), key=lambda i: i[0][0] + i[0][1])
        )
        self.params: tuple[tuple[TokenLocation, frozenset[str]], ...] = tuple(
            (TokenLocation(LocationKind.PARAM, name), frozenset(issuers))
            for name, issuers in sorted(params.items())
        )
        self.cookies: tuple[tuple[TokenLocation, frozenset[str]], ...] = tuple(
            (TokenLocation(LocationKind.COOKIE, name), frozenset(issuers))
            for name, issuers in sorted(cookies.items())
        )

    def extract(self, parts: RequestParts) -> tuple[ExtractedToken, ...]:
        tokens: list[ExtractedToken] = []
        for loc, issuers in self.headers:
            raw = parts.headers.get(loc.name)
            if raw is None:
                continue
            for value in raw.split(","):
                token = token_after_prefix(value.strip(), loc.prefix)
                if token is not None:
                    tokens.append(ExtractedToken(token, loc, issuers))
        if self.params and parts.query:
            for loc, issuers in self.params:
                param = parts.params.get(loc.name)
                if param is not None:
                    tokens.append(ExtractedToken(param, loc, issuers))
        if self.cookies and "cookie" in parts.headers:
            for loc, issuers in self.cookies:
                cookie = parts.cookies.get(loc.name)
                if cookie is not None:
                    tokens.append(ExtractedToken(cookie, loc, issuers))
        return tuple(tokens)
