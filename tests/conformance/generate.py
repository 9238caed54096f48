"""Requests generated from AuthorizationPolicies: matching, near-miss and non-matching.

Every field of every rule (``from.source``, ``to.operation``, ``when``) becomes a
:class:`Field` on one request *dimension* (method, path, Host, a header,
x-forwarded-for, destination port, client certificate, JWT, SNI, source
address). For each of its values the generator makes a matching value, a few
near misses (one character off, other case, prefix without the wildcard
part, one path segment too many, an address just outside the CIDR, ...) and a
non-matching value. It then combines them: for every rule and every
``from`` x ``to`` pair one request meant to satisfy all its fields, the same
request with each field in turn changed to a near miss or to a non-matching
value, and a few seeded random mixes. Whether a request *really* matches is not
decided here: the golden Envoy decides, our server must agree.

All randomness comes from one ``random.Random`` seeded by the suite seed and
the case id, so a seed reproduces the exact requests.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_HOST = "conformance.test"
NEUTRAL_METHOD = "NEUTRAL"
"""A valid method no golden names: the base of the generated requests, so that an
ALLOW rule with no method condition is the only one that can let them through."""
DEFAULT_ISSUER = "https://conformance.test/issuer"
UNCONFIGURED_ISSUER = "https://unconfigured.test"
SOURCE = "127.0.0.1"
OTHER_SOURCE = "127.0.0.9"
NON_IP = "203.0.113.7"
NON_PEER = "spiffe://cluster.local/ns/unrelated/sa/unrelated"
GARBAGE_TOKEN = "!garbage"

#: Fields that cannot be reproduced on loopback; requests for them are still sent with
#: whatever value the connection has, only matching ones cannot be made.
UNREACHABLE = {
    "destination.ip": "destination.ip (listeners are on 127.0.0.0/8)",
    "source": "ipBlocks/source.ip (the client binds 127.0.0.0/8 only)",
    "metadata": "experimental.envoy.filters.* (no filter writes that metadata)",
}
NOT_A_TOKEN = "methods that are not HTTP tokens (Envoy answers 400 before any filter)"
NOT_A_PATH = "paths without a leading '/' (no request target can match)"
TCHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


def is_token(text: str) -> bool:
    """An HTTP method Envoy's codec accepts (RFC 9110 token)."""
    return bool(text) and all(c in TCHARS for c in text)


@dataclass(frozen=True)
class Request:
    """One HTTP/1.1 request, sent identically to both Envoys."""

    label: str
    method: str = "GET"
    path: str = "/"
    host: str = DEFAULT_HOST
    headers: tuple[tuple[str, str], ...] = ()
    xff: str | None = None
    source: str = SOURCE
    port: int | None = None
    """A listener port named by the policies; None is the case's default listener."""
    peer: str | None = None
    """URI SAN of the client certificate (mTLS cases); None sends no certificate."""
    sni: str | None = None
    claims: str | None = None
    """JSON of the JWT payload sent as ``Authorization: Bearer``; None sends no token."""

    def key(self) -> tuple[Any, ...]:
        return (self.method, self.path, self.host, self.headers, self.xff, self.source,
                self.port, self.peer, self.sni, self.claims)

    def describe(self) -> str:
        parts = [f"{self.method} {self.path}", f"host={self.host!r}"]
        parts += [f"{k}: {v!r}" for k, v in self.headers]
        if self.xff is not None:
            parts.append(f"x-forwarded-for: {self.xff!r}")
        if self.source != SOURCE:
            parts.append(f"from {self.source}")
        if self.port is not None:
            parts.append(f"port {self.port}")
        if self.peer is not None:
            parts.append(f"client cert URI SAN {self.peer!r}")
        if self.sni is not None:
            parts.append(f"SNI {self.sni!r}")
        if self.claims is not None:
            parts.append(f"JWT {self.claims}")
        return f"[{self.label}] " + ", ".join(parts)

    def token_claims(self) -> dict[str, Any] | None:
        """The payload to sign, or None for no token or a garbage one (``claims`` = GARBAGE)."""
        if self.claims is None or self.claims == GARBAGE_TOKEN:
            return None
        return dict(json.loads(self.claims))


@dataclass(frozen=True)
class Field:
    """One field of one rule: its values, the dimension it reads, how to vary it."""

    name: str
    dim: str
    form: str
    values: tuple[str, ...]
    negated: bool = False
    arg: Any = None


# --- policy -> fields -----------------------------------------------------------

SOURCE_FIELDS: Mapping[str, tuple[str, str]] = {
    "principals": ("peer", "principal"),
    "namespaces": ("peer", "namespace"),
    "serviceAccounts": ("peer", "service_account"),
    "trustDomains": ("peer", "trust_domain"),
    "requestPrincipals": ("token", "request_principal"),
    "ipBlocks": ("source", "ip"),
    "remoteIpBlocks": ("xff", "ip"),
}
OPERATION_FIELDS: Mapping[str, tuple[str, str]] = {
    "methods": ("method", "string"),
    "paths": ("path", "path"),
    "hosts": ("host", "host"),
    "ports": ("port", "port"),
}
CONDITIONS: Mapping[str, tuple[str, str]] = {
    "source.ip": ("source", "ip"),
    "remote.ip": ("xff", "ip"),
    "source.namespace": ("peer", "namespace"),
    "source.principal": ("peer", "principal"),
    "source.serviceAccount": ("peer", "service_account"),
    "source.trustDomain": ("peer", "trust_domain"),
    "request.auth.principal": ("token", "request_principal"),
    "request.auth.audiences": ("token", "claim"),
    "request.auth.presenter": ("token", "claim"),
    "destination.ip": ("destination.ip", "ip"),
    "destination.port": ("port", "port"),
    "connection.sni": ("sni", "string"),
}
CLAIM_OF = {"request.auth.audiences": ("aud",), "request.auth.presenter": ("azp",)}


def _not(name: str) -> str:
    return "not" + name[0].upper() + name[1:]


def _fields_of(block: Mapping[str, Any], table: Mapping[str, tuple[str, str]], where: str,
               namespace: str) -> list[Field]:
    out = []
    for name, (dim, form) in table.items():
        for key, negated in ((name, False), (_not(name), True)):
            values = tuple(str(v) for v in block.get(key) or ())
            if values:
                out.append(Field(f"{where}.{key}", dim, form, values, negated,
                                 namespace if form == "service_account" else None))
    return out


def _claim_path(key: str) -> tuple[str, ...]:
    inner = key[len("request.auth.claims"):]
    names = re.findall(r"\[([^\[\]]*)\]", inner)
    if names and "".join(f"[{n}]" for n in names) == inner:
        return tuple(names)
    return (inner[1:-1],)


def _condition(cond: Mapping[str, Any], where: str) -> list[Field]:
    key = str(cond.get("key", ""))
    out = []
    for attr, negated in (("values", False), ("notValues", True)):
        values = tuple(str(v) for v in cond.get(attr) or ())
        if not values:
            continue
        name = f"{where}[{key}].{attr}"
        if key.startswith("request.headers[") and key.endswith("]"):
            out.append(Field(name, "header", "string", values, negated, key[16:-1]))
        elif key.startswith("request.auth.claims["):
            out.append(Field(name, "token", "claim", values, negated, _claim_path(key)))
        elif key.startswith("experimental.envoy.filters."):
            out.append(Field(name, "metadata", "string", values, negated))
        elif key in CONDITIONS:
            dim, form = CONDITIONS[key]
            out.append(Field(name, dim, form, values, negated, CLAIM_OF.get(key)))
    return out


@dataclass
class RuleFields:
    """One rule: a list of field sets, one per ``from`` x ``to`` combination."""

    where: str
    combinations: list[list[Field]] = field(default_factory=list)

    def all_fields(self) -> list[Field]:
        seen: dict[tuple[Any, ...], Field] = {}
        for combo in self.combinations:
            for f in combo:
                seen.setdefault((f.name, f.values, f.negated), f)
        return list(seen.values())


def rules_of(policies: Sequence[Mapping[str, Any]]) -> list[RuleFields]:
    out = []
    for policy in policies:
        meta = policy.get("metadata") or {}
        namespace = str(meta.get("namespace", "default"))
        spec = policy.get("spec") or {}
        for i, rule in enumerate(spec.get("rules") or ()):
            rule = rule or {}
            where = f"{meta.get('name')}.rules[{i}]"
            sources = [_fields_of((s or {}).get("source") or {}, SOURCE_FIELDS,
                                  f"{where}.from[{j}]", namespace)
                       for j, s in enumerate(rule.get("from") or ())] or [[]]
            operations = [_fields_of((o or {}).get("operation") or {}, OPERATION_FIELDS,
                                     f"{where}.to[{j}]", namespace)
                          for j, o in enumerate(rule.get("to") or ())] or [[]]
            when = [f for j, c in enumerate(rule.get("when") or ())
                    for f in _condition(c or {}, f"{where}.when[{j}]")]
            combos = [s + o + when for s in sources for o in operations]
            out.append(RuleFields(where, combos))
    return out


# --- values ------------------------------------------------------------------------


def _word(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def _one_off(text: str, rng: random.Random) -> str:
    """``text`` with one letter or digit replaced by another character."""
    spots = [i for i, c in enumerate(text) if c.isalnum()]
    if not spots:
        return text + "x"
    i = rng.choice(spots)
    choices = [c for c in string.ascii_lowercase + string.digits if c != text[i].lower()]
    return text[:i] + rng.choice(choices) + text[i + 1:]


def _case_flip(text: str) -> str | None:
    flipped = text.swapcase()
    return flipped if flipped != text else None


Candidates = list[tuple[str, str]]


def string_values(pattern: str, rng: random.Random) -> Candidates:
    """(tag, value): match, near and non for Istio's string pattern forms."""
    w = _word(rng)
    out: Candidates = []
    if pattern == "*":
        out += [("match", w), ("near:empty", "")]
    elif pattern.endswith("*"):
        pre = pattern[:-1]
        out += [("match", pre + w), ("match:bare-prefix", pre)]
        if pre:
            out += [("near:short-prefix", pre[:-1] + w), ("near:one-off", _one_off(pre, rng) + w)]
        if (flip := _case_flip(pre)) is not None:
            out.append(("near:case", flip + w))
    elif pattern.startswith("*"):
        suf = pattern[1:]
        out += [("match", w + suf), ("match:bare-suffix", suf)]
        if suf:
            out += [("near:short-suffix", w + suf[1:]), ("near:one-off", w + _one_off(suf, rng))]
        if (flip := _case_flip(suf)) is not None:
            out.append(("near:case", w + flip))
    else:
        out += [("match", pattern), ("near:one-off", _one_off(pattern, rng)),
                ("near:truncated", pattern[:-1]), ("near:extended", pattern + w[:1])]
        if (flip := _case_flip(pattern)) is not None:
            out.append(("near:case", flip))
    out.append(("non", "zz" + w))
    return [(t, v) for t, v in out if v or t == "near:empty"]


def host_values(pattern: str, rng: random.Random) -> Candidates:
    out = string_values(pattern, rng)
    plain = [v for t, v in out if t == "match"]
    if plain:
        out += [("near:with-port", plain[0] + ":80"), ("match?:upper", plain[0].upper()),
                ("near:trailing-dot", plain[0] + ".")]
    return [(t, v) for t, v in out if v]


TEMPLATE_RE = re.compile(r"\{\*\*?\}")


def path_values(pattern: str, rng: random.Random) -> Candidates:
    w = _word(rng)
    out: Candidates = []
    if TEMPLATE_RE.search(pattern):
        def fill(one: str, many: str) -> str:
            return pattern.replace("{**}", many).replace("{*}", one)
        out += [("match", fill(w, f"{w}/{_word(rng)}")), ("match:one", fill(w, w)),
                ("match?:empty-many", fill(w, "")), ("near:slash-in-one", fill(f"{w}/x", w)),
                ("near:empty-one", fill("", w)), ("near:equals-in-one", fill(f"{w}=1", w)),
                ("match?:query", fill(w, w) + "?a=b"), ("near:trailing-slash", fill(w, w) + "/")]
    elif pattern == "*":
        out += [("match", f"/{w}"), ("match:root", "/")]
    elif pattern.endswith("*"):
        pre = pattern[:-1]
        out += [("match", pre + w), ("match:bare-prefix", pre), ("match:query", pre + "?q=1"),
                ("near:no-slash", pre.rstrip("/")), ("near:one-off", _one_off(pre, rng) + w)]
        if (flip := _case_flip(pre)) is not None:
            out.append(("near:case", flip + w))
    elif pattern.startswith("*"):
        suf = pattern[1:]
        out += [("match", f"/{w}{suf}"), ("match:query", f"/{w}{suf}?x={w}"),
                ("near:short-suffix", f"/{w}{suf[:-1]}"), ("near:trailing-slash", f"/{w}{suf}/")]
        if (flip := _case_flip(suf)) is not None:
            out.append(("near:case", f"/{w}{flip}"))
    else:
        out += [("match", pattern), ("match:query", pattern + "?a=b"),
                ("near:trailing-slash", pattern + "/"), ("near:one-off", _one_off(pattern, rng)),
                ("near:dot-segment", f"/{w}/..{pattern}" if pattern.startswith("/") else pattern),
                ("near:encoded", _percent_one(pattern)), ("near:double-slash", "/" + pattern),
                ("near:matrix", pattern + ";a=b")]
        if (flip := _case_flip(pattern)) is not None:
            out.append(("near:case", flip))
    out.append(("non", f"/zz{w}"))
    # A request target must start with "/"; a policy path without one can never match.
    return [(t, v if v.startswith("/") else "/" + v) for t, v in out if v]


def _percent_one(path: str) -> str:
    for i, c in enumerate(path):
        if c.isalpha():
            return f"{path[:i]}%{ord(c):02X}{path[i + 1:]}"
    return path


def ip_values(pattern: str, rng: random.Random) -> Candidates:
    try:
        net = ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return [("non", NON_IP)]
    inside = net.network_address + (rng.randrange(net.num_addresses) if net.num_addresses > 1
                                    else 0)
    out: Candidates = [("match", str(inside)), ("match:first", str(net.network_address))]
    if int(net.broadcast_address) < (2 ** net.max_prefixlen) - 1:
        out.append(("near:after", str(net.broadcast_address + 1)))
    if int(net.network_address) > 0:
        out.append(("near:before", str(net.network_address - 1)))
    out.append(("non", NON_IP))
    return out


def port_values(pattern: str, rng: random.Random) -> list[tuple[str, int | None]]:
    try:
        port = int(pattern)
    except ValueError:
        return [("non", None)]
    out: list[tuple[str, int | None]] = [("match", port), ("non", None)]
    if port < 65535:
        out.insert(1, ("near:next", port + 1))
    return out


# --- peer identities (mTLS) ----------------------------------------------------------


def _fill(pattern: str, w: str) -> str:
    if pattern == "*":
        return w
    if pattern.endswith("*"):
        return pattern[:-1] + w
    if pattern.startswith("*"):
        return w + pattern[1:]
    return pattern


def peer_values(form: str, pattern: str, rng: random.Random, bundle: Sequence[str],
                arg: Any) -> Candidates:
    w = _word(rng)
    spiffe = "spiffe://"
    out: Candidates = []
    if form == "principal":
        value = _fill(pattern, w)
        out += [("match", spiffe + value), ("near:one-off", spiffe + _one_off(value, rng))]
        if (flip := _case_flip(value)) is not None:
            out.append(("near:case", spiffe + flip))
        parts = value.split("/")
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            rest = "/".join(parts[1:])
            for td in (*bundle, "cluster.local", "other-td"):
                out.append((f"alias:{td}", f"{spiffe}{td}/{rest}"))
        if pattern.endswith("*") and len(pattern) > 1:
            out.append(("near:short-prefix", spiffe + pattern[:-2] + w))
        if pattern.startswith("*") and len(pattern) > 1:
            out.append(("near:short-suffix", spiffe + w + pattern[2:]))
        out.append(("near:no-scheme", "https://" + value))
    elif form == "namespace":
        ns = pattern.replace("*", w)
        out += [("match", f"{spiffe}cluster.local/ns/{ns}/sa/{w}"),
                ("near:one-off", f"{spiffe}cluster.local/ns/{_one_off(ns, rng)}/sa/{w}"),
                ("near:no-sa", f"{spiffe}cluster.local/ns/{ns}"),
                ("near:sa-is-ns", f"{spiffe}cluster.local/ns/{w}/sa/{ns}"),
                ("match:other-td", f"{spiffe}other-td/ns/{ns}/sa/default")]
    elif form == "service_account":
        ns, _, sa = pattern.rpartition("/")
        ns = ns or str(arg)
        out += [("match", f"{spiffe}cluster.local/ns/{ns}/sa/{sa}"),
                ("match:extra-segment", f"{spiffe}cluster.local/ns/{ns}/x/sa/{sa}"),
                ("match:suffix-segment", f"{spiffe}cluster.local/ns/{ns}/sa/{sa}/x"),
                ("near:sa-one-off", f"{spiffe}cluster.local/ns/{ns}/sa/{_one_off(sa, rng)}"),
                ("near:sa-longer", f"{spiffe}cluster.local/ns/{ns}/sa/{sa}{w}"),
                ("near:other-ns", f"{spiffe}cluster.local/ns/{ns}{w[:1]}/sa/{sa}"),
                ("near:no-td", f"{spiffe}/ns/{ns}/sa/{sa}")]
    elif form == "trust_domain":
        td = _fill(pattern, w)
        out += [("match", f"{spiffe}{td}/ns/default/sa/default"),
                ("near:longer", f"{spiffe}{td}x/ns/default/sa/default"),
                ("near:one-off", f"{spiffe}{_one_off(td, rng)}/ns/default/sa/default"),
                ("near:no-path", f"{spiffe}{td}")]
        if pattern.endswith("*") and len(pattern) > 1:
            out.append(("near:slash-in-wildcard", f"{spiffe}{pattern[:-1]}a/b/ns/x/sa/y"))
    out.append(("non", NON_PEER))
    return out


# --- JWT claims --------------------------------------------------------------------


def request_principal_claims(pattern: str, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """Tokens for a ``requestPrincipals`` value, under every reading of ``iss/sub``."""
    w = _word(rng)
    out: list[tuple[str, dict[str, Any]]] = []
    filled = _fill(pattern, w)
    if "/" in filled:
        iss, sub = filled.rsplit("/", 1)
        out += [("match", {"iss": iss, "sub": sub}),
                ("near:sub-one-off", {"iss": iss, "sub": _one_off(sub, rng)}),
                ("near:iss-one-off", {"iss": _one_off(iss, rng), "sub": sub}),
                ("near:no-sub", {"iss": iss})]
        if pattern.endswith("/*"):
            out.append(("near:empty-sub", {"iss": iss, "sub": ""}))
    else:
        out += [("match?:empty-sub", {"iss": filled, "sub": ""}),
                ("match?:any-sub", {"iss": filled, "sub": w}),
                ("near:no-sub", {"iss": filled}),
                ("match?:as-sub", {"iss": DEFAULT_ISSUER, "sub": filled}),
                ("near:iss-one-off", {"iss": _one_off(filled, rng), "sub": ""})]
        if pattern.endswith("*") and pattern != "*":
            out.append(("match?:bare-prefix-empty-sub", {"iss": pattern[:-1], "sub": ""}))
        if pattern.startswith("*") and pattern != "*":
            out.append(("match?:suffix-sub", {"iss": DEFAULT_ISSUER, "sub": w + pattern[1:]}))
    out.append(("non", {"iss": DEFAULT_ISSUER, "sub": "zz" + w}))
    return [(t, c) for t, c in out if c.get("iss")]


def _nest(path: Sequence[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for name in reversed(path):
        out = {name: out}
    return dict(out)


def claim_values(path: Sequence[str], pattern: str, rng: random.Random
                 ) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for tag, value in string_values(pattern, rng):
        if path == ("iss",) and not value:
            continue
        out.append((tag, _nest(path, value)))
        if tag == "match" and path != ("iss",):
            out.append(("match:in-list", _nest(path, ["zz" + _word(rng), value])))
            out.append(("near:number", _nest(path, 7)))
    if path != ("iss",):
        out.append(("near:missing", {}))
    return out


# --- requests ------------------------------------------------------------------------


@dataclass
class CaseRequests:
    requests: list[Request]
    issuers: list[str]
    ports: list[int]
    tls: bool
    unreachable: dict[str, str]


Override = Callable[[Request], Request]


def _merge_claims(req: Request, claims: Mapping[str, Any]) -> Request:
    current = req.token_claims() or {"iss": DEFAULT_ISSUER, "sub": "conformance"}

    def merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                            dict) else v
        return out

    return replace(req, claims=json.dumps(merge(current, claims), sort_keys=True))


@dataclass(frozen=True)
class Set:
    """Replace request attributes: ``Set(method="GET")(request)``."""

    changes: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, **changes: Any) -> Set:
        return cls(tuple(changes.items()))

    def __call__(self, req: Request) -> Request:
        return replace(req, **dict(self.changes))


@dataclass(frozen=True)
class Header:
    """Set header ``name`` to ``values`` (one line each); no values removes it.
    ``keep`` keeps the lines already there (a repeated header)."""

    name: str
    values: tuple[str, ...]
    keep: bool = False

    def __call__(self, req: Request) -> Request:
        kept = req.headers if self.keep else tuple(
            h for h in req.headers if h[0].lower() != self.name.lower())
        return replace(req, headers=(*kept, *((self.name, v) for v in self.values)))


@dataclass(frozen=True)
class Claims:
    """Merge claims into the request's JWT payload (a default token if it has none)."""

    claims: str

    def __call__(self, req: Request) -> Request:
        return _merge_claims(req, json.loads(self.claims))


def overrides(f: Field, rng: random.Random, bundle: Sequence[str]
              ) -> list[tuple[str, Override]]:
    """(tag, change) for every value of ``f``; tags start with match/near/non."""
    out: list[tuple[str, Override]] = []
    for i, pattern in enumerate(f.values):
        label = f"{f.name}[{i}]={pattern!r}"

        def add(tag: str, fn: Override, label: str = label) -> None:
            out.append((f"{label} {tag}", fn))

        if f.dim == "method":
            for tag, v in string_values(pattern, rng):
                if v:
                    add(tag, Set.of(method=v))
        elif f.dim == "path":
            for tag, v in path_values(pattern, rng):
                add(tag, Set.of(path=v))
        elif f.dim == "host":
            for tag, v in host_values(pattern, rng):
                add(tag, Set.of(host=v))
        elif f.dim == "header":
            name = str(f.arg)
            for tag, v in string_values(pattern, rng):
                add(tag, Header(name, (v,)))
            add("match?:repeated", Header(name, ("zz", _fill(pattern, "v"))))
            add("absent", Header(name, ()))
            add("match?:name-case", Header(name.swapcase(), (_fill(pattern, "v"),)))
        elif f.dim == "xff":
            for tag, v in ip_values(pattern, rng):
                add(tag, Set.of(xff=v))
                if tag == "match":
                    add("match:rightmost", Set.of(xff=f"{NON_IP}, {v}"))
                    add("near:not-rightmost", Set.of(xff=f"{v}, {NON_IP}"))
                    add("near:v4-mapped", Set.of(xff=f"::ffff:{v}"))
                    add("near:with-port", Set.of(xff=f"{v}:8080"))
                    add("match?:spaces", Set.of(xff=f" {v} "))
            add("near:garbage", Set.of(xff="not-an-ip"))
        elif f.dim == "source":
            add("non:loopback", Set.of(source=OTHER_SOURCE))
        elif f.dim == "port":
            for tag, port in port_values(pattern, rng):
                add(tag, Set.of(port=port))
        elif f.dim == "peer":
            for tag, v in peer_values(f.form, pattern, rng, bundle, f.arg):
                add(tag, Set.of(peer=v))
            add("absent", Set.of(peer=None))
        elif f.dim == "sni":
            for tag, v in string_values(pattern, rng):
                if _hostname(v):
                    add(tag, Set.of(sni=v))
        elif f.dim == "token":
            if f.form == "request_principal":
                for tag, claims in request_principal_claims(pattern, rng):
                    add(tag, Set.of(claims=json.dumps(claims, sort_keys=True)))
            else:
                for tag, claims in claim_values(tuple(f.arg), pattern, rng):
                    add(tag, Claims(json.dumps(claims, sort_keys=True)))
            add("absent", Set.of(claims=None))
    return out


def _hostname(text: str) -> bool:
    """A name a TLS client can send as SNI (non-empty labels of letters, digits, '-')."""
    labels = text.split(".")
    return all(lab and len(lab) < 64 and all(c.isalnum() or c == "-" for c in lab)
               for lab in labels) and len(text) < 254


def _first(items: Iterable[tuple[str, Override]], prefix: str) -> Override | None:
    for tag, fn in items:
        if tag.split(" ")[-1].startswith(prefix):
            return fn
    return None


def generate(policies: Sequence[Mapping[str, Any]], rng: random.Random,
             bundle: Sequence[str] = (), limit: int = 400) -> CaseRequests:
    rules = rules_of(policies)
    plain = Request("nothing")
    base = replace(plain, label="neutral", method=NEUTRAL_METHOD)
    requests: list[Request] = [plain, replace(plain, label="POST nothing", method="POST"),
                               replace(plain, label="other source", source=OTHER_SOURCE), base]
    unreachable: dict[str, str] = {}
    per_field: dict[tuple[Any, ...], list[tuple[str, Override]]] = {}

    def field_overrides(f: Field) -> list[tuple[str, Override]]:
        key = (f.name, f.values, f.negated)
        if key not in per_field:
            per_field[key] = overrides(f, rng, bundle)
            if f.dim in UNREACHABLE:
                unreachable[f.name] = UNREACHABLE[f.dim]
            elif f.dim == "method" and not f.negated and not all(
                    is_token(_fill(v, "x")) for v in f.values):
                unreachable[f.name] = NOT_A_TOKEN
            elif f.dim == "path" and not f.negated and not all(
                    v.startswith(("/", "*")) for v in f.values):
                unreachable[f.name] = NOT_A_PATH
        return per_field[key]

    # 1. Every value of every field on its own.
    singles: list[Request] = []
    for rule in rules:
        for f in rule.all_fields():
            for tag, fn in field_overrides(f):
                singles.append(replace(fn(base), label=tag))

    # 2. Per rule and from x to pair: all fields matching, then each one changed.
    combos: list[Request] = []
    for rule in rules:
        for n, fields in enumerate(rule.combinations[:6]):
            full = base
            for f in fields:
                # Methods that are not tokens would make the whole request a 400.
                matching = [fn for tag, fn in field_overrides(f)
                            if tag.split(" ")[-1] == "match" and is_token(fn(full).method)]
                if not f.negated and matching:
                    full = rng.choice(matching)(full)
            label = f"{rule.where} combo[{n}]"
            combos.append(replace(full, label=f"{label} all fields matching"))
            for f in fields:
                items = field_overrides(f)
                wanted = ("match",) if f.negated else ("near", "non", "absent")
                for prefix in wanted:
                    if (change := _first(items, prefix)) is not None:
                        combos.append(replace(change(full),
                                              label=f"{label} with {f.name} {prefix}"))

    # 3. Seeded random mixes of values from different fields.
    pool = [(tag, fn) for items in per_field.values() for tag, fn in items]
    mixes: list[Request] = []
    for n in range(min(8, len(pool))):
        req = base
        tags = []
        for tag, fn in rng.sample(pool, k=min(3, len(pool))):
            req = fn(req)
            tags.append(tag)
        mixes.append(replace(req, label=f"mix[{n}]: " + " + ".join(tags)))

    requests = _unique(requests + combos + singles + mixes)
    if len(requests) > limit:
        keep, rest = requests[:limit // 2], requests[limit // 2:]
        requests = keep + rng.sample(rest, limit - len(keep))

    fields = [f for rule in rules for f in rule.all_fields()]
    tls = any(f.dim in ("peer", "sni") for f in fields)
    issuers: list[str] = []
    if any(f.dim == "token" for f in fields):
        w = _word(rng)
        requests += [
            replace(base, label="JWT from an issuer no rule names",
                    claims=json.dumps({"iss": UNCONFIGURED_ISSUER, "sub": w})),
            replace(base, label="JWT that does not verify", claims=GARBAGE_TOKEN),
            replace(base, label="JWT with only the default issuer",
                    claims=json.dumps({"iss": DEFAULT_ISSUER, "sub": w})),
        ]
        for req in requests:
            iss = (req.token_claims() or {}).get("iss")
            if isinstance(iss, str) and iss and iss != UNCONFIGURED_ISSUER \
                    and iss not in issuers:
                issuers.append(iss)
    if tls:
        requests.append(replace(base, label="client cert outside the policies", peer=NON_PEER))
    ports = sorted({r.port for r in requests if r.port is not None})
    return CaseRequests(_unique(requests), issuers, ports, tls, unreachable)


def _unique(requests: Iterable[Request]) -> list[Request]:
    seen: dict[tuple[Any, ...], Request] = {}
    for r in requests:
        seen.setdefault(r.key(), r)
    return list(seen.values())
