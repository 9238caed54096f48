"""Keys, tokens, a JWKS server, policies and CheckRequests for the benchmark.

Workloads (one request shape each, same for every server):

- ``w1``: one valid RS256 token, repeated (a token cache hits every time);
- ``w2``: N distinct valid tokens (default 10,000), cycled;
- ``w3``: a token with an invalid signature (same kid, other key): 401;
- ``w4``: no token under DENY ``notRequestPrincipals: ["*"]``: 403;
- ``w5``: policy scale, bench/policy_scale.py's request against 10 policies in
  scope, alone or with 10,000 more in other namespaces.

w1-w4 use one policy set: a RequestAuthentication for the bench issuer (JWKS
served by ``JwksServer``) and the DENY policy above, in namespace ``bench``,
which the requests name in their route context extensions (docs/scope.md).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from policy_scale import policies, request_bytes

from authz._proto.envoy.service.auth.v3 import external_auth_pb2
from authz.authn.cache import DEFAULT_MAX_ENTRIES, outcome_memo_size
from authz.tools import jwks, keys, token

ISSUER = "https://issuer.bench.example"
NAMESPACE = "bench"
HOST = "api.bench"
PATH = "/api/orders"
TOKEN_TTL = 6 * 3600

# What each workload must get from a policy-enforcing server (ours, naive):
# "OK" or the denied HTTP status; bare answers OK to everything.
EXPECTED = {"w1": "OK", "w2": "OK", "w2f": "OK", "w3": "http 401", "w4": "http 403"}


@dataclass
class Keys:
    signing: keys.PrivateKey
    rogue: keys.PrivateKey
    kid: str

    def jwks_document(self) -> dict[str, Any]:
        return jwks.jwks_document([jwks.jwk_entry(self.signing, kid=self.kid, alg="RS256")])

    def public_pem(self) -> bytes:
        return self.signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_keys() -> Keys:
    signing = keys.generate_private_key("rsa", 2048)
    rogue = keys.generate_private_key("rsa", 2048)
    return Keys(signing, rogue, jwks.key_thumbprint(signing))


def _claims(i: int, now: int) -> dict[str, Any]:
    return token.build_claims(iss=ISSUER, sub=f"user-{i}", now=now, ttl=TOKEN_TTL,
                              extra={"groups": ["bench"]})


def _mint_range(pem: bytes, kid: str, start: int, stop: int, now: int) -> list[str]:
    key = keys.narrow_private(serialization.load_pem_private_key(pem, password=None), "bench")
    return [token.mint(key, _claims(i, now), kid=kid, alg="RS256") for i in range(start, stop)]


def mint_tokens(k: Keys, count: int, processes: int = 2) -> list[str]:
    """``count`` distinct valid tokens (RSA signing is ~1 ms each, so in parallel)."""
    now = int(time.time())
    pem = keys.private_key_pem(k.signing)
    if count < 200 or processes <= 1:
        return _mint_range(pem, k.kid, 0, count, now)
    step = -(-count // processes)
    with ProcessPoolExecutor(processes) as pool:
        parts = [pool.submit(_mint_range, pem, k.kid, i, min(count, i + step), now)
                 for i in range(0, count, step)]
        return [t for part in parts for t in part.result()]


def bad_signature_token(k: Keys) -> str:
    """Right issuer and kid, signed by another key: fails signature verification."""
    return token.mint(k.rogue, _claims(0, int(time.time())), kid=k.kid, alg="RS256")


class JwksServer:
    """Serves the JWKS on 127.0.0.1 from a daemon thread (stdlib, no event loop)."""

    def __init__(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main_policy(jwks_uri: str) -> str:
    """RequestAuthentication + DENY notRequestPrincipals ["*"] in namespace bench."""
    return f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: bench-jwt, namespace: {NAMESPACE}}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {jwks_uri}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: {NAMESPACE}}}
spec:
  action: DENY
  rules:
  - from:
    - source: {{notRequestPrincipals: ["*"]}}
"""


def scale_policy(elsewhere: int) -> str:
    """policy_scale.py's set: 10 policies in scope plus ``elsewhere`` in other namespaces."""
    text = policies(NAMESPACE, 10)
    if elsewhere:
        text += "---\n" + "---\n".join(
            policies(f"ns{j}", 10, offset=100 + j * 10) for j in range(elsewhere // 10))
    return text


def check_request(bearer: str | None) -> bytes:
    """A serialized CheckRequest as Envoy sends it for GET api.bench/api/orders."""
    req = external_auth_pb2.CheckRequest()
    attrs = req.attributes
    http = attrs.request.http
    http.id = "5f3c2b1a-0d4e-4b7a-9c1d-2e3f4a5b6c7d"
    http.method, http.host, http.path = "GET", HOST, PATH
    http.scheme, http.protocol = "http", "HTTP/1.1"
    headers = {":authority": HOST, ":path": PATH, ":method": "GET", ":scheme": "http",
               "user-agent": "wrk", "accept": "*/*", "x-forwarded-proto": "http",
               "x-request-id": http.id}
    if bearer is not None:
        headers["authorization"] = f"Bearer {bearer}"
    for name, value in headers.items():
        http.headers[name] = value
    attrs.source.address.socket_address.address = "10.3.4.5"
    attrs.source.address.socket_address.port_value = 41234
    attrs.destination.address.socket_address.address = "10.3.0.1"
    attrs.destination.address.socket_address.port_value = 8080
    attrs.context_extensions["namespace"] = NAMESPACE
    return req.SerializeToString()


@dataclass
class Workload:
    name: str
    title: str
    tokens: Sequence[str | None]
    """Bearer tokens cycled (None: no Authorization header)."""

    def check_requests(self) -> list[bytes]:
        return [check_request(t) for t in self.tokens]


CACHED_DECISIONS = outcome_memo_size(DEFAULT_MAX_ENTRIES)
"""What our server remembers at most by default: 12,500 decisions (10,000 tokens)."""


def token_workloads(k: Keys, distinct: int, fresh: int = 0) -> dict[str, Workload]:
    """w1-w4, and with ``fresh`` > 0 "w2f": that many more tokens (none of w2's),
    cycled. More than our caches hold (10,000 tokens, 12,500 decisions), every
    request carries a token the server has no memory of: what w2 measures on a
    server without a per-token cache."""
    tokens = mint_tokens(k, distinct + fresh)
    found = {
        "w1": Workload("w1", "1 valid token", tokens[:1]),
        "w2": Workload("w2", f"{distinct:,} valid tokens cycled", tokens[:distinct]),
        "w3": Workload("w3", "invalid signature (401)", [bad_signature_token(k)]),
        "w4": Workload("w4", "no token, DENY notRequestPrincipals (403)", [None]),
    }
    if fresh:
        beyond = ", beyond the caches" if fresh > CACHED_DECISIONS else ""
        found["w2f"] = Workload("w2f", f"{fresh:,} other valid tokens cycled{beyond}",
                                tokens[distinct:])
    return found


W5_REQUEST = request_bytes


def write_policy(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policies.yaml").write_text(text)
    return directory
