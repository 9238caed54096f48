"""``authz test``: policies tested like code, offline, with the server's own engine.

A test file (``*.authz-test.yaml``) names its policies, optionally a JWKS (a file,
or ``generate: true`` for an ephemeral key pair per issuer that the suite mints
tokens with), a fixed clock (``now``) and a list of cases: a request, a token
(literal or claims to mint, good or bad on purpose) and what must come back.
Every case goes through ``Snapshot.evaluate``, exactly as a live ``Check``; the
explanation walk (``authz.explain``) runs only for ``--coverage`` and for failing
cases with ``--explain``. docs/testing-policies.md describes the format.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import yaml

from authz.authn.keys import KeySet, parse_jwks
from authz.decision import Decision
from authz.errors import AuthzError
from authz.explain.coverage import Coverage
from authz.explain.request import RequestSpec, RequestSpecError
from authz.explain.walk import RULE_NAME, Explanation, ResourceLocator, explain
from authz.pipeline.snapshot import PolicyOptions, Snapshot, compile_snapshot
from authz.policy.authorization import Rule
from authz.policy.errors import Location, PolicyError, PolicyErrors
from authz.policy.load import load_paths
from authz.policy.request_authentication import JwtRule
from authz.tools.check import FileKeys
from authz.tools.jwks import jwk_entry, jwks_document
from authz.tools.keys import PrivateKey, ToolError, generate_private_key, load_private_key
from authz.tools.token import build_claims, mint, parse_duration

__all__ = [
    "CaseResult", "FileResult", "SuiteError", "TestCase", "TestFile", "discover", "init_text",
    "junit_xml", "load_test_file", "register", "run", "run_file",
]

SUFFIX = ".authz-test.yaml"
DEFAULT_NOW = 1_893_456_000
"""2030-01-01T00:00:00Z: the clock of a file that names none, so no test depends on
the date it runs."""
DEFAULT_URL = "http://api.local/"
MALFORMED_TOKEN = "not-a-valid-token"  # noqa: S105 - a deliberately broken token


class SuiteError(AuthzError, ValueError):
    """A test file that cannot be run (unknown field, wrong type, missing policy file):
    the message names the file and line to fix. ``authz test`` exits 2."""

    def __init__(self, message: str, location: Location | None = None) -> None:
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


# --- reading test files -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """A YAML value with the line it starts on (for ``file:line`` errors)."""

    value: Any
    line: int
    children: Mapping[Any, Node] = field(default_factory=dict)


def _node(node: yaml.Node, loader: yaml.SafeLoader) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        kids = {loader.construct_object(k, deep=True): _node(v, loader) for k, v in node.value}
        return Node({k: v.value for k, v in kids.items()}, line, kids)
    if isinstance(node, yaml.SequenceNode):
        items = {i: _node(v, loader) for i, v in enumerate(node.value)}
        return Node([v.value for v in items.values()], line, items)
    return Node(loader.construct_object(node, deep=True), line)


class _Reader:
    """Typed access to one test file's YAML with errors at the right line."""

    def __init__(self, file: str) -> None:
        self.file = file

    def at(self, node: Node) -> Location:
        return Location(self.file, node.line)

    def fail(self, node: Node, message: str) -> SuiteError:
        return SuiteError(message, self.at(node))

    def mapping(self, node: Node, what: str, known: Sequence[str]) -> Mapping[str, Node]:
        if not isinstance(node.value, dict):
            raise self.fail(node, f"{what} must be a mapping")
        for key, child in node.children.items():
            if key not in known:
                raise self.fail(child, f"{what}: unknown field {key!r}; known: "
                                f"{', '.join(known)}")
        return {str(k): v for k, v in node.children.items()}

    def string(self, node: Node | None, what: str, default: str | None = None) -> str | None:
        if node is None or node.value is None:
            return default
        if isinstance(node.value, bool) or not isinstance(node.value, str | int | float):
            raise self.fail(node, f"{what} must be a string")
        return str(node.value)

    def strings(self, node: Node | None, what: str) -> tuple[str, ...]:
        if node is None or node.value is None:
            return ()
        if isinstance(node.value, str):
            return (node.value,)
        if not isinstance(node.value, list) or not all(
                isinstance(v, str) for v in node.value):
            raise self.fail(node, f"{what} must be a string or a list of strings")
        return tuple(node.value)

    def str_map(self, node: Node | None, what: str) -> dict[str, str]:
        if node is None or node.value is None:
            return {}
        if not isinstance(node.value, dict) or not all(
                isinstance(v, str | int | float) and not isinstance(v, bool)
                for v in node.value.values()):
            raise self.fail(node, f"{what} must be a mapping of names to strings")
        return {str(k): str(v) for k, v in node.value.items()}

    def integer(self, node: Node | None, what: str) -> int | None:
        if node is None or node.value is None:
            return None
        if isinstance(node.value, bool) or not isinstance(node.value, int):
            raise self.fail(node, f"{what} must be an integer")
        return int(node.value)

    def flag(self, node: Node | None, what: str) -> bool:
        if node is None or node.value is None:
            return False
        if not isinstance(node.value, bool):
            raise self.fail(node, f"{what} must be true or false")
        return bool(node.value)


@dataclass(frozen=True, slots=True)
class MintSpec:
    """Claims to mint a token from, and how to spoil it on purpose."""

    issuer: str
    sub: str = "test-user"
    aud: tuple[str, ...] = ()
    exp: int = 3600
    """Seconds after ``now``."""
    nbf: int | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    kid: str | None = None
    alg: str | None = None
    expired: bool = False
    wrong_key: bool = False
    malformed: bool = False


@dataclass(frozen=True, slots=True)
class TokenSpec:
    literal: str | None
    mint: MintSpec | None
    place: str = "header"
    """``header``, ``query`` or ``cookie``."""
    name: str = ""
    prefix: str | None = None


@dataclass(frozen=True, slots=True)
class Expectation:
    status: int | None = None
    policy: str | None = None
    """``ns/name`` of the policy whose rule decided."""
    rule: int | None = None
    body: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Headers that must reach the upstream, with these values."""
    headers_absent: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TestCase:
    name: str
    location: Location
    request: RequestSpec
    token: TokenSpec | None
    expect: Expectation


@dataclass(frozen=True, slots=True)
class TestFile:
    path: Path
    policies: tuple[Path, ...]
    now: int
    jwks_file: Path | None
    generate: bool
    private_keys: Mapping[str, Path]
    root_namespace: str
    default_namespace: str
    cases: tuple[TestCase, ...]


def _now(r: _Reader, node: Node | None) -> int:
    if node is None or node.value is None:
        return DEFAULT_NOW
    value = node.value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp())
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return _now(r, Node(parsed, node.line))
    raise r.fail(node, "now must be a Unix time or a date like 2030-01-01T00:00:00Z")


def _duration(r: _Reader, node: Node | None, what: str, default: int | None) -> int | None:
    if node is None or node.value is None:
        return default
    try:
        return parse_duration(str(node.value), signed=True)
    except ToolError as exc:
        raise r.fail(node, f"{what}: {exc}") from None


def _mint_spec(r: _Reader, node: Node, fields: Mapping[str, Node]) -> MintSpec:
    issuer = r.string(fields.get("issuer"), "token.issuer")
    if not issuer:
        raise r.fail(node, "token.issuer is required to mint a token (or give the token "
                     "as a string)")
    claims = dict(fields["claims"].value) if "claims" in fields else {}
    if "claims" in fields and not isinstance(fields["claims"].value, dict):
        raise r.fail(fields["claims"], "token.claims must be a mapping")
    if "groups" in fields:
        claims["groups"] = list(r.strings(fields["groups"], "token.groups"))
    exp = _duration(r, fields.get("exp"), "token.exp", 3600)
    return MintSpec(
        issuer=issuer, sub=r.string(fields.get("sub"), "token.sub", "test-user") or "test-user",
        aud=r.strings(fields.get("aud"), "token.aud"), exp=exp if exp is not None else 3600,
        nbf=_duration(r, fields.get("nbf"), "token.nbf", None), claims=claims,
        kid=r.string(fields.get("kid"), "token.kid"), alg=r.string(fields.get("alg"), "token.alg"),
        expired=r.flag(fields.get("expired"), "token.expired"),
        wrong_key=r.flag(fields.get("wrong_key"), "token.wrong_key"),
        malformed=r.flag(fields.get("malformed"), "token.malformed"),
    )


TOKEN_FIELDS = ("issuer", "sub", "aud", "groups", "exp", "nbf", "claims", "kid", "alg",
                "expired", "wrong_key", "malformed", "value", "in", "name", "prefix")


def _token(r: _Reader, node: Node | None) -> TokenSpec | None:
    if node is None or node.value is None:
        return None
    if isinstance(node.value, str):
        return TokenSpec(node.value, None)
    f = r.mapping(node, "token", TOKEN_FIELDS)
    place = r.string(f.get("in"), "token.in", "header") or "header"
    if place not in ("header", "query", "cookie"):
        raise r.fail(f["in"], "token.in must be header, query or cookie")
    literal = r.string(f.get("value"), "token.value")
    spec = None if literal is not None else _mint_spec(r, node, f)
    if place == "cookie" and not f.get("name"):
        raise r.fail(node, "token.name is required for a cookie (the rule's fromCookies)")
    return TokenSpec(literal, spec, place, r.string(f.get("name"), "token.name", "") or "",
                     r.string(f.get("prefix"), "token.prefix"))


def _request(r: _Reader, node: Node | None) -> RequestSpec:
    if node is None:
        return RequestSpec(DEFAULT_URL)
    f = r.mapping(node, "request", ("method", "url", "path", "headers", "namespace", "labels",
                                    "source", "sni"))
    url = r.string(f.get("url"), "request.url")
    path = r.string(f.get("path"), "request.path")
    if url and path:
        raise r.fail(node, "request: give url or path, not both")
    if url is None:
        url = DEFAULT_URL.rstrip("/") + (path or "/")
    labels: str | None = None
    if "labels" in f:
        if isinstance(f["labels"].value, dict):
            labels = ",".join(f"{k}={v}" for k, v in r.str_map(f["labels"], "labels").items())
        else:
            labels = r.string(f["labels"], "request.labels")
    source = r.mapping(f["source"], "request.source", ("ip", "principal")) if "source" in f \
        else {}
    return RequestSpec(
        url=url, method=r.string(f.get("method"), "request.method", "GET") or "GET",
        headers=tuple(r.str_map(f.get("headers"), "request.headers").items()),
        source_ip=r.string(source.get("ip"), "request.source.ip", "127.0.0.1") or "127.0.0.1",
        source_principal=r.string(source.get("principal"), "request.source.principal", "")
        or "",
        namespace=r.string(f.get("namespace"), "request.namespace"), labels=labels,
        sni=r.string(f.get("sni"), "request.sni", "") or "",
    )


def _expect(r: _Reader, node: Node | None, case: Node) -> Expectation:
    if node is None:
        raise r.fail(case, "expect is required (at least expect.status)")
    f = r.mapping(node, "expect", ("status", "policy", "rule", "body", "headers",
                                   "headers_absent"))
    status = r.integer(f.get("status"), "expect.status")
    if status is not None and status not in (200, 401, 403):
        raise r.fail(f["status"], "expect.status must be 200, 401 or 403")
    rule = r.integer(f.get("rule"), "expect.rule")
    policy = r.string(f.get("policy"), "expect.policy")
    if policy is not None and "/" not in policy:
        raise r.fail(f["policy"], "expect.policy must be namespace/name")
    if rule is not None and policy is None:
        raise r.fail(f["rule"], "expect.rule needs expect.policy")
    return Expectation(status, policy, rule, r.string(f.get("body"), "expect.body"),
                       {k.lower(): v for k, v in r.str_map(f.get("headers"),
                                                           "expect.headers").items()},
                       tuple(h.lower() for h in r.strings(f.get("headers_absent"),
                                                          "expect.headers_absent")))


def _paths(r: _Reader, node: Node | None, base: Path, what: str) -> tuple[Path, ...]:
    out = []
    for raw in r.strings(node, what):
        path = (base / raw) if not Path(raw).is_absolute() else Path(raw)
        if not path.exists():
            assert node is not None
            raise r.fail(node, f"{what}: {raw} does not exist (paths are relative to the "
                         "test file)")
        out.append(path)
    return tuple(out)


def load_test_file(path: Path) -> TestFile:
    file = str(path)
    r = _Reader(file)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SuiteError(f"{file}: cannot read: {exc.strerror}") from None
    loader = yaml.SafeLoader(text)
    try:
        raw = loader.get_single_node()
        if raw is None:
            raise SuiteError("the test file is empty", Location(file, 1))
        root = _node(raw, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SuiteError(f"invalid YAML: {exc.problem or exc}",
                         Location(file, mark.line + 1 if mark else 1)) from None
    finally:
        loader.dispose()
    f = r.mapping(root, "test file", ("policies", "jwks", "now", "root_namespace",
                                      "default_namespace", "cases"))
    if "policies" not in f:
        raise r.fail(root, "policies is required: the policy files or folders to test")
    policies = _paths(r, f["policies"], path.parent, "policies")
    jwks_file, generate, private = None, False, {}
    if "jwks" in f:
        j = r.mapping(f["jwks"], "jwks", ("file", "generate", "keys"))
        generate = r.flag(j.get("generate"), "jwks.generate")
        files = _paths(r, j.get("file"), path.parent, "jwks.file")
        jwks_file = files[0] if files else None
        keys = r.str_map(j.get("keys"), "jwks.keys")
        private = {iss: path.parent / p for iss, p in keys.items()}
        if sum((generate, jwks_file is not None, bool(private))) != 1:
            raise r.fail(f["jwks"], "jwks: give exactly one of generate: true, file: "
                         "JWKS.json or keys: {ISSUER: key.pem}")
    cases_node = f.get("cases")
    if cases_node is None or not isinstance(cases_node.value, list) or not cases_node.value:
        raise r.fail(cases_node or root, "cases must be a non-empty list")
    cases = []
    names: set[str] = set()
    for child in cases_node.children.values():
        c = r.mapping(child, "case", ("name", "request", "token", "expect"))
        name = r.string(c.get("name"), "case name")
        if not name:
            raise r.fail(child, "every case needs a name")
        if name in names:
            raise r.fail(child, f"case name {name!r} is used twice")
        names.add(name)
        try:
            request = _request(r, c.get("request"))
            request.check_request()
        except RequestSpecError as exc:
            raise r.fail(c.get("request") or child, f"request: {exc}") from None
        cases.append(TestCase(name, r.at(child), request, _token(r, c.get("token")),
                              _expect(r, c.get("expect"), child)))
    for case in cases:
        if case.token and case.token.mint and jwks_file is not None:
            raise SuiteError(f"case {case.name!r} mints a token, which needs jwks.generate or "
                             "jwks.keys (a JWKS file has no private keys)", case.location)
        if case.token and case.token.mint and not (generate or private):
            raise SuiteError(f"case {case.name!r} mints a token: add jwks: {{generate: true}}",
                             case.location)
    return TestFile(
        path, policies, _now(r, f.get("now")), jwks_file, generate, private,
        r.string(f.get("root_namespace"), "root_namespace", "istio-system") or "istio-system",
        r.string(f.get("default_namespace"), "default_namespace", "default") or "default",
        tuple(cases))


def discover(paths: Sequence[str]) -> list[Path]:
    """``*.authz-test.yaml`` under each directory (recursively, hidden folders such as
    ``.git`` or a ``.venv`` and ``node_modules`` skipped), or the files given."""
    found: list[Path] = []
    for raw in paths or ["."]:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(x for x in p.rglob(f"*{SUFFIX}") if x.is_file() and not any(
                part.startswith(".") or part == "node_modules"
                for part in x.relative_to(p).parts[:-1])))
        elif p.is_file():
            found.append(p)
        else:
            raise SuiteError(f"{raw}: no such file or directory")
    return found


# --- keys and tokens --------------------------------------------------------------


def _family(alg: str | None) -> str:
    if alg is None or alg.startswith("ES"):
        return "ec"
    if alg.startswith(("RS", "PS")):
        return "rsa"
    if alg == "EdDSA":
        return "ed25519"
    raise ToolError(f"alg {alg} cannot be minted by authz test (use ES*, RS*, PS* or EdDSA)")


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """A ``KeyProvider`` with one key set per issuer, whatever the rule's jwksUri says:
    the suite's own keys stand in for the issuer's."""

    by_issuer: Mapping[str, KeySet]

    def keys_for(self, rule: JwtRule) -> KeySet | None:
        return self.by_issuer.get(rule.issuer)

    def request_refetch(self, rule: JwtRule) -> None:
        """Fixed keys: nothing to refetch."""

    @property
    def generation(self) -> object:
        return self


@dataclass(slots=True)
class Signers:
    """Private keys per (issuer, family), and the JWKS each issuer publishes."""

    keys: dict[tuple[str, str], PrivateKey] = field(default_factory=dict)
    strangers: dict[str, PrivateKey] = field(default_factory=dict)

    def jwks(self) -> dict[str, dict[str, Any]]:
        """Issuer -> its JWKS document (what a jwksUri would serve)."""
        out: dict[str, list[dict[str, str]]] = {}
        for (issuer, _), key in self.keys.items():
            out.setdefault(issuer, []).append(jwk_entry(key))
        return {issuer: jwks_document(entries) for issuer, entries in out.items()}

    def provider(self) -> IssuerKeys:
        return IssuerKeys({i: parse_jwks(json.dumps(doc)) for i, doc in self.jwks().items()})

    def key(self, issuer: str, family: str) -> PrivateKey | None:
        return self.keys.get((issuer, family))

    def stranger(self, family: str) -> PrivateKey:
        if family not in self.strangers:
            self.strangers[family] = generate_private_key(family)
        return self.strangers[family]


def _signers(tf: TestFile, rules: Sequence[JwtRule]) -> Signers:
    signers = Signers()
    if tf.private_keys:
        for issuer, pem in tf.private_keys.items():
            key = load_private_key(pem)
            signers.keys[(issuer, _key_family(key))] = key
        return signers
    issuers = {r.issuer for r in rules}
    wanted: set[tuple[str, str]] = {(i, "ec") for i in issuers}
    for case in tf.cases:
        if case.token and case.token.mint:
            wanted.add((case.token.mint.issuer, _family(case.token.mint.alg)))
    for issuer, family in sorted(wanted):
        signers.keys[(issuer, family)] = generate_private_key(family)
    return signers


def _key_family(key: PrivateKey) -> str:
    name = type(key).__name__.lower()
    return "rsa" if "rsa" in name else "ed25519" if "ed25519" in name else "ec"


def mint_token(spec: MintSpec, signers: Signers, now: int) -> str:
    if spec.malformed:
        return MALFORMED_TOKEN
    family = _family(spec.alg)
    key = signers.key(spec.issuer, family)
    if key is None:
        raise SuiteError(f"no {family} key for issuer {spec.issuer}: no jwtRule names it "
                         "and jwks.keys has none")
    kid = spec.kid if spec.kid is not None else jwk_entry(key)["kid"]
    signer = signers.stranger(family) if spec.wrong_key else key
    exp = -3600 if spec.expired else spec.exp
    claims = build_claims(iss=spec.issuer, sub=spec.sub, now=now, ttl=max(exp, 1),
                          aud=spec.aud, nbf_offset=spec.nbf, extra=spec.claims)
    claims["exp"] = now + exp
    return mint(signer, claims, kid=kid, alg=spec.alg)


def place_token(spec: RequestSpec, token: TokenSpec, raw: str) -> RequestSpec:
    headers = list(spec.headers)
    url = spec.url
    if token.place == "header":
        name = token.name or "authorization"
        prefix = token.prefix if token.prefix is not None else (
            "Bearer " if name.lower() == "authorization" else "")
        headers.append((name, prefix + raw))
    elif token.place == "query":
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}{token.name or 'access_token'}={raw}"
    else:
        headers.append(("cookie", f"{token.name}={raw}"))
    return RequestSpec(url, spec.method, tuple(headers), spec.source_ip, spec.source_principal,
                       spec.namespace, spec.labels, spec.sni, spec.context)


# --- running ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: TestCase
    decision: Decision
    request: RequestSpec
    """The request as sent, token included (so another runner can replay it)."""
    problems: tuple[str, ...]
    decided_at: Location | None
    explanation: Explanation | None = None

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class FileResult:
    file: TestFile
    results: list[CaseResult]
    seconds: float
    signers: Signers | None = None
    """The suite's keys (``generate``/``keys``): what a live server would need to agree."""


def _upstream_headers(request: RequestSpec, d: Decision) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers:
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    for name in d.upstream_headers_to_remove:
        headers.pop(name.lower(), None)
    for h in d.upstream_headers:
        headers[h.name.lower()] = h.value
    return headers


def check_expectation(exp: Expectation, d: Decision, request: RequestSpec) -> list[str]:
    """Each difference between what was expected and what came back, readable."""
    problems = []
    if exp.status is not None and d.status != exp.status:
        problems.append(f"status: expected {exp.status}, got {d.status} ({d.reason.value}"
                        + (f": {d.body}" if not d.allowed and d.body else "") + ")")
    if exp.policy is not None:
        m = RULE_NAME.fullmatch(d.policy or "")
        got = f"{m['ns']}/{m['name']}" if m else None
        got_rule = int(m["i"]) if m else None
        if got != exp.policy or (exp.rule is not None and got_rule != exp.rule):
            want = exp.policy + (f" rule {exp.rule}" if exp.rule is not None else "")
            have = f"{got} rule {got_rule}" if m else "no rule decided"
            problems.append(f"deciding rule: expected {want}, got {have}")
    if exp.body is not None and (d.body or "") != exp.body:
        problems.append(f"body: expected {exp.body!r}, got {d.body!r}")
    if exp.headers or exp.headers_absent:
        seen = _upstream_headers(request, d) if d.allowed else None
        for name, value in exp.headers.items():
            if seen is None:
                problems.append(f"header {name}: expected {value!r} upstream, but the "
                                "request was denied")
            elif seen.get(name) != value:
                problems.append(f"header {name}: expected {value!r} upstream, got "
                                f"{seen.get(name)!r}")
        for name in exp.headers_absent:
            if seen is not None and name in seen:
                problems.append(f"header {name}: expected absent upstream, but it is sent")
    return problems


def compile_for(tf: TestFile) -> tuple[Snapshot, ResourceLocator, Signers | None]:
    resources = load_paths(tf.policies, tf.default_namespace)
    options = PolicyOptions(root_namespace=tf.root_namespace)
    probe = compile_snapshot(resources, 1, options)
    signers: Signers | None = None
    if tf.jwks_file is not None:
        keyset = parse_jwks(tf.jwks_file.read_bytes())
        if not keyset.usable:
            raise SuiteError(f"{tf.jwks_file}: {keyset.error}")
        snapshot = compile_snapshot(resources, 1, options, FileKeys(keyset))
    else:
        signers = _signers(tf, probe.jwt_rules) if (tf.generate or tf.private_keys) else None
        snapshot = compile_snapshot(resources, 1, options,
                                    signers.provider() if signers else IssuerKeys({}))
    return snapshot, ResourceLocator(resources), signers


def run_file(tf: TestFile, coverage: Coverage | None = None, explain_failures: bool = False
             ) -> FileResult:
    """Every case of one file, against one snapshot compiled from its policies."""
    started = time.monotonic()
    snapshot, locate, signers = compile_for(tf)
    if coverage is not None:
        coverage.add_snapshot(snapshot, locate)
    results = []
    for case in tf.cases:
        request = case.request
        if case.token is not None:
            if case.token.literal is not None:
                raw = case.token.literal
            else:
                assert case.token.mint is not None and signers is not None
                raw = mint_token(case.token.mint, signers, tf.now)
            request = place_token(request, case.token, raw)
        try:
            view = request.view(tf.default_namespace)
        except RequestSpecError as exc:
            raise SuiteError(f"case {case.name!r}: {exc}", case.location) from None
        decision = snapshot.evaluate(view, float(tf.now))
        problems = check_expectation(case.expect, decision, request)
        explanation = None
        if coverage is not None or (problems and explain_failures):
            explanation = explain(snapshot, view, float(tf.now), locate)
            if coverage is not None:
                coverage.record(explanation)
        results.append(CaseResult(case, decision, request, tuple(problems),
                                  locate.rule(decision.policy), explanation))
    return FileResult(tf, results, time.monotonic() - started, signers)


# --- reports ----------------------------------------------------------------------


def _decided(result: CaseResult) -> str:
    d = result.decision
    if d.policy:
        where = f"{result.decided_at}: " if result.decided_at else ""
        return f"decided by {where}{d.policy}"
    if d.status == 401 or (d.status == 403 and d.reason.value.startswith("jwt")):
        return f"decided by authentication ({d.detail or d.body})"
    return f"decided by: {d.detail or d.reason.value} (no single rule)"


def failure_text(result: CaseResult) -> str:
    lines = [f"FAIL {result.case.location}: {result.case.name}: {_decided(result)}"]
    lines += [f"  {p}" for p in result.problems]
    if result.explanation is not None:
        lines += ["  " + line for line in result.explanation.text().splitlines()]
    return "\n".join(lines)


def junit_xml(files: Sequence[FileResult]) -> bytes:
    """JUnit XML (Jenkins ``junit-10.xsd`` shape): one testsuite per test file."""
    root = ET.Element("testsuites")
    total = failed = 0
    for fr in files:
        failures = sum(not r.passed for r in fr.results)
        suite = ET.SubElement(root, "testsuite", {
            "name": str(fr.file.path), "tests": str(len(fr.results)),
            "failures": str(failures), "errors": "0", "skipped": "0",
            "time": f"{fr.seconds:.3f}",
            "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        })
        for r in fr.results:
            case = ET.SubElement(suite, "testcase", {
                "name": r.case.name, "classname": fr.file.path.name.removesuffix(SUFFIX),
                "time": "0.000"})
            if not r.passed:
                failure = ET.SubElement(case, "failure", {
                    "message": "; ".join(r.problems), "type": "expectation"})
                failure.text = failure_text(r)
        total += len(fr.results)
        failed += failures
    root.set("tests", str(total))
    root.set("failures", str(failed))
    root.set("errors", "0")
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


# --- the starter ------------------------------------------------------------------


ELSEWHERE = "/authz-test-elsewhere"


def _concrete(pattern: str) -> str:
    """A value an Istio pattern (``*`` prefix/suffix, ``{*}`` templates) matches."""
    return re.sub(r"\{[^}]*\}", "x", pattern).replace("*", "x")


@dataclass(slots=True)
class _Draft:
    """One request of the starter, built up from a rule's fields."""

    path: str = "/"
    method: str = "GET"
    token: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)


def _drafts(rule: Rule) -> tuple[_Draft, _Draft]:
    """(a request the rule should match, one it should not), from its first ``to``,
    its first ``from`` (requestPrincipals or not) and its header/claim conditions."""
    hit, miss = _Draft(), _Draft()
    op = rule.to[0] if rule.to else None
    if op is not None:
        if op.paths:
            hit.path, miss.path = _concrete(op.paths[0]), ELSEWHERE
        elif op.not_paths:
            hit.path, miss.path = ELSEWHERE, _concrete(op.not_paths[0])
        if op.methods:
            hit.method = op.methods[0].upper()
            if not op.paths and not op.not_paths:
                miss.method = "DELETE" if hit.method != "DELETE" else "PATCH"
    src = rule.from_[0] if rule.from_ else None
    if src is not None and src.not_request_principals and not src.request_principals:
        hit.token, miss.token = False, True
    for cond in rule.when:
        if not cond.values:
            continue
        value = _concrete(cond.values[0])
        if cond.key.startswith("request.headers[") and cond.names:
            hit.headers[cond.names[0]] = value
        elif cond.key.startswith("request.auth.claims[") and len(cond.names) == 1:
            hit.claims[cond.names[0]] = [value] if cond.names[0] == "groups" else value
    return hit, miss


def init_text(policy_paths: Sequence[str], test_file: Path) -> str:
    """A commented starter that passes: for every rule, a request it should match and
    one it should not, each expecting what the engine answers now."""
    resources = load_paths(policy_paths)
    snapshot = compile_snapshot(resources, 1, PolicyOptions())
    rel = [os.path.relpath(Path(p).resolve(), test_file.resolve().parent) for p in policy_paths]
    issuers = sorted({r.issuer for r in snapshot.jwt_rules})
    probe = TestFile(test_file, (), DEFAULT_NOW, None, bool(issuers), {}, "istio-system",
                     "default", ())
    signers = _signers(probe, snapshot.jwt_rules) if issuers else None
    snap = compile_snapshot(resources, 1, PolicyOptions(),
                            signers.provider() if signers else IssuerKeys({}))
    cases: list[dict[str, Any]] = []
    comments: list[str] = []

    def add(name: str, ns: str, draft: _Draft) -> None:
        request: dict[str, Any] = {"method": draft.method, "path": draft.path, "namespace": ns}
        if draft.headers:
            request["headers"] = dict(draft.headers)
        req = RequestSpec(DEFAULT_URL.rstrip("/") + draft.path, draft.method,
                          tuple(draft.headers.items()), namespace=ns)
        token: dict[str, Any] | None = None
        if draft.token and issuers and signers is not None:
            token = {"issuer": issuers[0], "sub": "alice"}
            extra = {k: v for k, v in draft.claims.items() if k != "groups"}
            if "groups" in draft.claims:
                token["groups"] = draft.claims["groups"]
            if extra:
                token["claims"] = extra
            spec = MintSpec(issuer=issuers[0], sub="alice", claims=dict(draft.claims))
            req = place_token(req, TokenSpec(None, spec), mint_token(spec, signers, DEFAULT_NOW))
        d = snap.evaluate(req.view(), float(DEFAULT_NOW))
        case: dict[str, Any] = {"name": name, "request": request}
        if token is not None:
            case["token"] = token
        expect: dict[str, Any] = {"status": d.status}
        m = RULE_NAME.fullmatch(d.policy or "")
        if m:
            expect["policy"] = f"{m['ns']}/{m['name']}"
            expect["rule"] = int(m["i"])
        case["expect"] = expect
        cases.append(case)

    for policy in snapshot.authorization.policies:
        if policy.action.value == "CUSTOM" or policy.target_refs:
            comments.append(f"{policy.ref}: {policy.action.value} / targetRefs policies are "
                            "not evaluated by authz; no case written")
            continue
        if policy.selector:
            comments.append(f"{policy.ref} has a selector: add request.labels to its cases")
        for i, rule in enumerate(policy.rules):
            hit, miss = _drafts(rule)
            label = f"{policy.ref} rule {i}"
            add(f"{label}: a request it should match", policy.namespace, hit)
            add(f"{label}: a request it should not match", policy.namespace, miss)
            if rule.from_ and any(
                    getattr(rule.from_[0], f) for f in ("principals", "namespaces", "ip_blocks",
                                                        "remote_ip_blocks", "service_accounts")):
                comments.append(f"{label} tests the peer: give its cases request.source")
    for jwt_rule in snapshot.jwt_rules:
        ns = jwt_rule.source.split(" ")[1].split("/")[0] if " " in jwt_rule.source else "default"
        spoiled = MintSpec(issuer=jwt_rule.issuer, sub="alice", expired=True)
        assert signers is not None
        req = place_token(RequestSpec(DEFAULT_URL, namespace=ns), TokenSpec(None, spoiled),
                          mint_token(spoiled, signers, DEFAULT_NOW))
        d = snap.evaluate(req.view(), float(DEFAULT_NOW))
        cases.append({
            "name": f"{jwt_rule.source}: an expired token", "request": {"path": "/",
                                                                        "namespace": ns},
            "token": {"issuer": jwt_rule.issuer, "sub": "alice", "expired": True},
            "expect": {"status": d.status, **({"body": d.body} if not d.allowed else {})}})
    doc: dict[str, Any] = {"policies": rel, "now": "2030-01-01T00:00:00Z"}
    if issuers:
        doc["jwks"] = {"generate": True}
    doc["cases"] = cases
    header = [
        "# Starter tests written by 'authz test --init'. Each expectation below is what the",
        "# policies answer today: read every case, fix the ones whose answer is not what you",
        "# intend, and make the requests real (paths, headers, claims). Run: authz test " +
        test_file.name,
        "# Format: docs/testing-policies.md. A token is minted from claims with the suite's",
        "# own keys (jwks: generate: true); expired: true, wrong_key: true or malformed: true",
        "# make a bad one on purpose.",
    ]
    header += [f"# NOTE: {c}" for c in comments]
    return "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False, width=100)


# --- command ----------------------------------------------------------------------


def _load_all(paths: Sequence[str]) -> list[TestFile]:
    files = discover(paths)
    if not files:
        raise SuiteError(f"no *{SUFFIX} files under {', '.join(paths) or '.'}")
    return [load_test_file(p) for p in files]


def run(args: argparse.Namespace) -> int:
    if args.init:
        return _init(args)
    coverage = Coverage() if (args.coverage or args.min_coverage is not None) else None
    try:
        files = _load_all(args.paths)
        results = [run_file(tf, coverage, args.explain) for tf in files]
    except (SuiteError, PolicyErrors, PolicyError, ToolError, OSError) as exc:
        print(f"authz test: {exc}", file=sys.stderr)
        return 2
    passed = sum(r.passed for fr in results for r in fr.results)
    failed = sum(not r.passed for fr in results for r in fr.results)
    if args.output == "json":
        out: dict[str, Any] = {"passed": passed, "failed": failed, "cases": [
            {"file": str(fr.file.path), "name": r.case.name, "passed": r.passed,
             "status": r.decision.status, "policy": r.decision.policy,
             "decided_at": str(r.decided_at) if r.decided_at else None,
             "problems": list(r.problems),
             **({"explanation": r.explanation.to_json()}
                if r.explanation is not None and not r.passed else {})}
            for fr in results for r in fr.results]}
        if coverage is not None:
            out["coverage"] = coverage.to_json()
        print(json.dumps(out, indent=2))
    else:
        for fr in results:
            for r in fr.results:
                if not r.passed:
                    print(failure_text(r))
        if coverage is not None:
            print(coverage.text())
        print(f"{passed} passed, {failed} failed")
    if args.junit:
        Path(args.junit).write_bytes(junit_xml(results))
    if failed:
        return 1
    if args.min_coverage is not None and coverage is not None \
            and coverage.percent + 1e-9 < args.min_coverage:
        print(f"authz test: coverage {coverage.percent:.1f}% is below --min-coverage "
              f"{args.min_coverage:g}%", file=sys.stderr)
        return 1
    return 0


def _init(args: argparse.Namespace) -> int:
    if not args.policy:
        print("authz test --init: name the policies with --policy PATH", file=sys.stderr)
        return 2
    target = Path(args.paths[0]) if args.paths else Path(f"policies{SUFFIX}")
    if not target.name.endswith(SUFFIX):
        print(f"authz test --init: the file name must end in {SUFFIX} (got {target})",
              file=sys.stderr)
        return 2
    if target.exists():
        print(f"authz test --init: {target} exists; not overwritten", file=sys.stderr)
        return 2
    try:
        text = init_text(args.policy, target)
    except (PolicyErrors, PolicyError, OSError, ValueError) as exc:
        print(f"authz test --init: {exc}", file=sys.stderr)
        return 2
    target.write_text(text)
    print(f"wrote {target}: {text.count('- name:')} case(s); run: authz test {target}")
    return 0


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("must be between 0 and 100")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "test",
        help="run policy test files (*.authz-test.yaml) offline",
        description="Run every case of the test files found under PATH (default: the current "
        "folder) against the policies each names, with the server's engine. Exit 0 when all "
        "pass, 1 when a case fails (or coverage is below --min-coverage), 2 when a test or "
        "policy file is invalid. Format: docs/testing-policies.md.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help=f"test file, or folder searched for *{SUFFIX}; with --init, the file "
                   "to write")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML for CI")
    p.add_argument("--coverage", action="store_true",
                   help="list every AuthorizationPolicy rule and jwtRule with the cases that "
                   "reached it")
    p.add_argument("--min-coverage", type=_percent, metavar="N",
                   help="fail (exit 1) below N percent of rule outcomes covered")
    p.add_argument("--explain", action="store_true",
                   help="explain every failing case step by step")
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.add_argument("--init", action="store_true",
                   help="write a commented starter test file for --policy")
    p.add_argument("--policy", action="append", metavar="PATH",
                   help="with --init: the policy file or folder to write cases for")
    p.set_defaults(func=run)
