"""``authz check``: decide one request offline, with the server's own engine.

The request is built as the ``CheckRequest`` Envoy would send and goes through
the same ``RequestView`` -> ``Snapshot.evaluate`` -> ``CheckResponse`` path as a
live ``Check``, so what this prints is what the server would answer.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.authn.engine import AuthnFailure
from authz.authn.jwks import JwksManager
from authz.authn.keys import KeySet, parse_jwks
from authz.decision import Decision
from authz.envoy.request_view import view_from_check_request
from authz.envoy.response import check_response
from authz.errors import UsageError
from authz.explain.walk import ResourceLocator, explain
from authz.pipeline.snapshot import PolicyOptions, Snapshot, compile_snapshot
from authz.policy.errors import PolicyErrors
from authz.policy.load import load_paths
from authz.policy.request_authentication import JwtRule
from authz.request.scope import LABELS_KEY, NAMESPACE_KEY, ScopeError, parse_labels

__all__ = [
    "CheckError", "FileKeys", "build_request", "load_snapshot", "read_token", "register",
    "report", "run", "verdict_for_token",
]


class CheckError(UsageError, ValueError):
    """A request description (``--url``, ``--header``, ``--labels``, ``--jwks``) that
    cannot be turned into a CheckRequest: fix the flag the message names. Exit 2."""


@dataclass(frozen=True, slots=True)
class FileKeys:
    """``--jwks FILE``: one key set for every rule, so no network is needed."""

    keys: KeySet

    def keys_for(self, rule: JwtRule) -> KeySet | None:
        return self.keys

    def request_refetch(self, rule: JwtRule) -> None:
        """A file does not change under us."""

    @property
    def generation(self) -> object:
        return self


def load_snapshot(
    paths: list[str], root_namespace: str, default_namespace: str, jwks_file: str | None
) -> Snapshot:
    """Compile the policies and give their JWT rules keys: from a file, or fetched
    live once by the server's own JWKS manager (first attempt of every source)."""
    options = PolicyOptions(root_namespace=root_namespace)
    resources = load_paths(paths, default_namespace)
    if jwks_file is not None:
        keyset = parse_jwks(Path(jwks_file).read_bytes())
        if not keyset.usable:
            raise CheckError(f"{jwks_file}: {keyset.error}")
        return compile_snapshot(resources, 1, options, FileKeys(keyset))
    manager = JwksManager()
    snapshot = compile_snapshot(resources, 1, options, manager)
    if snapshot.jwt_rules:

        async def fetch() -> None:
            await manager.start()
            try:
                manager.set_rules(snapshot.jwt_rules)
                await manager.wait_ready(2 * max(r.timeout for r in snapshot.jwt_rules) + 5)
            finally:
                await manager.stop()

        asyncio.run(fetch())
        for status in manager.status():
            if status.last_error:
                print(f"authz: JWKS {status.source}: {status.last_error}", file=sys.stderr)
    return snapshot


def build_request(
    url: str,
    method: str = "GET",
    headers: list[str] | None = None,
    token: str | None = None,
    source_ip: str = "127.0.0.1",
    source_principal: str = "",
    namespace: str | None = None,
    labels: str | None = None,
) -> external_auth_pb2.CheckRequest:
    try:
        ipaddress.ip_address(source_ip)
    except ValueError:
        raise CheckError(f"--source-ip must be an IPv4 or IPv6 address (got {source_ip!r})") \
            from None
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise CheckError(f"--url must be absolute, like http://host/path (got {url!r})")
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method = method.upper()
    http.scheme = parts.scheme
    http.host = parts.netloc
    http.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    http.protocol = "HTTP/1.1"
    for raw in headers or []:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise CheckError(f"--header must be 'Name: value' (got {raw!r})")
        key = name.strip().lower()
        value = value.strip()
        http.headers[key] = f"{http.headers[key]},{value}" if key in http.headers else value
    if token:
        http.headers["authorization"] = f"Bearer {token}"
    http.headers.setdefault(":authority", parts.netloc)
    src = req.attributes.source
    src.address.socket_address.address = source_ip
    src.address.socket_address.port_value = 50000
    src.principal = source_principal
    dst = req.attributes.destination
    dst.address.socket_address.address = "127.0.0.1"
    dst.address.socket_address.port_value = parts.port or (443 if parts.scheme == "https" else 80)
    if namespace:
        req.attributes.context_extensions[NAMESPACE_KEY] = namespace
    if labels:
        try:
            parse_labels(labels)  # what the server would deny, a flag here fails early
        except ScopeError as exc:
            raise CheckError(f"--labels: {exc}") from None
        req.attributes.context_extensions[LABELS_KEY] = labels
    return req


def verdict_for_token(
    raw: str, policy: list[str], namespace: str | None, labels: str | None,
    jwks_file: str | None, url: str = "http://localhost/",
) -> dict[str, Any]:
    """Would the RequestAuthentications in scope accept this token, and why not."""
    snapshot = load_snapshot(policy, "istio-system", "default", jwks_file)
    request = build_request(url, token=raw, namespace=namespace, labels=labels)
    view = view_from_check_request(request, "default")
    rules = snapshot.authenticator.rules_for(view.scope)
    if not rules:
        return {"accepted": False, "why": f"no RequestAuthentication applies to scope "
                f"{view.scope}: the token would not be verified at all"}
    result = snapshot.authenticator.authenticate(view, time.time())
    if isinstance(result, AuthnFailure):
        return {"accepted": False, "status": result.status, "why": result.body,
                "detail": result.detail}
    return {"accepted": True, "principal": result.principal,
            "issuers_in_scope": sorted({r.issuer for r in rules})}


def read_token(arg: str | None) -> str | None:
    """``TOKEN``, ``@FILE`` or ``-`` (stdin); surrounding blanks and a ``Bearer `` dropped."""
    if arg is None:
        return None
    if arg == "-":
        text = sys.stdin.read()
    elif arg.startswith("@"):
        text = Path(arg[1:]).read_text()
    else:
        text = arg
    text = text.strip()
    return text[len("Bearer "):] if text.startswith("Bearer ") else text


def report(decision: Decision) -> dict[str, Any]:
    response = check_response(decision)
    out: dict[str, Any] = {
        "decision": "allow" if decision.allowed else "deny",
        "status": decision.status,
        "reason": decision.reason.value,
        "policy": decision.policy,
        "detail": decision.detail or None,
    }
    if decision.allowed:
        ok = response.ok_response
        out["upstream_headers_set"] = {h.header.key: h.header.value for h in ok.headers}
        out["upstream_headers_removed"] = list(ok.headers_to_remove)
        out["query_parameters_removed"] = list(ok.query_parameters_to_remove)
    else:
        out["body"] = decision.body
        out["response_headers"] = {h.name: h.value for h in decision.response_headers}
    if decision.dry_run:
        out["dry_run"] = list(decision.dry_run)
    if decision.audit:
        out["audit"] = list(decision.audit)
    return out


def run(args: argparse.Namespace) -> int:
    try:
        request = build_request(
            args.url, args.method, args.header, read_token(args.token), args.source_ip,
            args.source_principal, args.namespace, args.labels,
        )
        snapshot = load_snapshot(args.policy, args.root_namespace, args.default_namespace,
                                 args.jwks)
    except PolicyErrors as exc:
        print(f"authz check: policies rejected:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a CheckError reaches cli.main: exit 2, like any usage error
        print(f"authz check: {exc}", file=sys.stderr)
        return 2
    view = view_from_check_request(request, args.default_namespace)
    now = time.time()
    decision = snapshot.evaluate(view, now)
    result = report(decision)
    result["scope"] = str(view.scope)
    explanation = None
    if args.explain:
        locate = ResourceLocator(load_paths(args.policy, args.default_namespace))
        explanation = explain(snapshot, view, now, locate)
        result["explanation"] = explanation.to_json()
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif explanation is not None:
        print(explanation.text())
    else:
        print(f"{result['decision'].upper()} {result['status']} ({result['reason']})")
        print(f"  scope:  {result['scope']}")
        print(f"  policy: {result['policy'] or 'no rule decided'}")
        for key in ("detail", "body", "dry_run", "audit", "upstream_headers_set",
                    "upstream_headers_removed", "query_parameters_removed", "response_headers"):
            if result.get(key):
                print(f"  {key.replace('_', ' ')}: {result[key]}")
    return 0 if decision.allowed else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="decide one request offline against policy files",
        description="Evaluate one request against policy files with the server's engine, like "
        "'istioctl x authz check' or 'opa eval'. Exit 0 for allow, 1 for deny, 2 for bad input.",
    )
    p.add_argument("--policy", action="append", required=True, metavar="PATH",
                   help="policy file or directory (repeatable)")
    p.add_argument("--url", required=True, help="request URL, e.g. http://api.local/orders?x=1")
    p.add_argument("--method", default="GET")
    p.add_argument("--header", action="append", metavar="'Name: value'",
                   help="request header (repeatable)")
    p.add_argument("--token", help="bearer token: TOKEN, @FILE or - for stdin")
    p.add_argument("--source-ip", default="127.0.0.1", help="direct peer address")
    p.add_argument("--source-principal", default="",
                   help="peer mTLS identity, e.g. spiffe://cluster.local/ns/foo/sa/bar")
    p.add_argument("--namespace", help="scope namespace (route context extension)")
    p.add_argument("--labels", help="scope workload labels k=v,k2=v2")
    p.add_argument("--jwks", metavar="FILE",
                   help="JWKS to verify tokens with (default: fetch each rule's JWKS live)")
    p.add_argument("--root-namespace", default="istio-system")
    p.add_argument("--default-namespace", default="default")
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.add_argument("--explain", action="store_true",
                   help="show every step: jwtRules and tokens, policies in scope, the field "
                   "that decided each rule, the final decision and why")
    p.set_defaults(func=run)
