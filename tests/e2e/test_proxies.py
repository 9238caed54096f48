"""nginx ``auth_request`` and Traefik ``forwardAuth`` give the gRPC path's answers.

A differential test: one authz serves gRPC (behind real Envoy, the reference) and HTTP
(behind real nginx, in ingress-nginx's ``auth-url`` and in the plain recipe's flavour, and
behind real Traefik) with the same policies; every e2e request of tests/e2e/test_check.py
and test_jwt.py goes through each, and the status, body, ``www-authenticate`` and the
headers the upstream receives must equal Envoy's.

What a proxy cannot express is written down here and in docs/http-proxies.md: ``RULES``
(applied to Envoy's answer before comparing: nginx's error page, the path a proxy cannot
rewrite...) and ``DEVIATIONS`` (single cases, each checking the proxy's own behaviour
instead, so it still fails when that changes).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz.request.scope import LABELS_KEY, NAMESPACE_KEY, parse_labels
from authz.testing.jwt_authn import Rule
from authz.testing.nginx import AuthTls, NginxRoute
from authz.testing.ports import free_port
from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.jwt_rig import JwksServer, SigningKey, ec_key, ed_key, jwks_of, rsa_key
from tests.e2e.jwt_rig import request_authentication as ra_policy
from tests.e2e.proxies import ConnectionCounter, StartNginx, StartTraefik
from tests.e2e.rig import EchoUpstream, Front, Reply, Route
from tests.e2e.test_check import POLICIES, ROUTES
from tests.e2e.test_jwt import COMPARED_HEADERS, VARIANTS, token_cases
from tests.policies import documents, require_jwt
from tests.shared_data import require_shared

pytestmark = [pytest.mark.e2e, pytest.mark.proxies]

# Requests of tests/e2e/test_check.py: name -> (method, path, headers).
CHECK_CASES: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "plain-allow": ("GET", "/hello?x=1", [("x-custom", "kept"), ("authorization", "Bearer t")]),
    "deny-path": ("GET", "/admin", []),
    "shop-no-token": ("GET", "/shop/cart", []),
    "default-namespace": ("GET", "/cart", []),
    "web-red": ("GET", "/web/", [("x-team", "red")]),
    "web-blue": ("GET", "/web/", [("x-team", "blue")]),
    "web-blue-mixed-case": ("GET", "/web/", [("X-Team", "blue")]),
    "web-repeated-header": ("GET", "/web/", [("x-team", "blue"), ("x-team", "red")]),
    "office-xff-last-in-block": ("GET", "/office/",
                                 [("x-forwarded-for", "198.51.100.1, 203.0.113.7")]),
    "office-xff-last-outside": ("GET", "/office/",
                                [("x-forwarded-for", "203.0.113.7, 198.51.100.1")]),
    "office-peer": ("GET", "/office/", []),
    "post-with-body": ("POST", "/hello", [("content-type", "text/plain")]),
}


@dataclass(frozen=True)
class Deviation:
    """A case a proxy answers differently from Envoy for a reason of its own."""

    why: str
    check: Callable[[dict[str, Any], dict[str, Any]], bool]
    """(Envoy's view, the proxy's view) -> whether the proxy did what ``why`` says."""


def _status_is(status: int) -> Callable[[dict[str, Any], dict[str, Any]], bool]:
    return lambda expected, got: bool(got["status"] == status)


DEVIATIONS: dict[str, dict[str, Deviation]] = {
    "nginx-ingress": {"office-xff-last-in-block": Deviation(
        "ingress-nginx (without use-forwarded-headers) replaces X-Forwarded-For with its "
        "peer and sends it as X-Real-IP: a client's X-Forwarded-For is not trusted, so "
        "remote.ip is the client's address (127.0.0.1 here) where Envoy took the last "
        "X-Forwarded-For entry", _status_is(403))},
    # The plain recipe passes the client's X-Forwarded-For on: the same answers as Envoy.
    "nginx-plain": {},
    "traefik": {"office-xff-last-in-block": Deviation(
        "Traefik appends the address it saw to X-Forwarded-For and authz takes the "
        "rightmost entry (--xff-num-trusted-hops 0): remote.ip is Traefik's peer "
        "(127.0.0.1 here) where Envoy took the client's last entry", _status_is(403))},
}
NGINX_ERROR_PAGE = re.compile(r"<title>(\d{3}) [^<]*</title>")


def view(reply: Reply, front: Front, proxy: str) -> dict[str, Any]:
    """What a client and the upstream saw, with the proxy's own host:port taken out."""
    if reply.upstream is None:
        realm = reply.headers.get("www-authenticate")
        body: str | None = reply.body
        if proxy.startswith("nginx"):
            # nginx never sends an auth_request subrequest's body: the client gets nginx's
            # error page for the status (documented deviation, checked here).
            page = NGINX_ERROR_PAGE.search(reply.body)
            assert page and int(page.group(1)) == reply.status, reply.body
            body = None
        return {"status": reply.status, "body": body,
                "www-authenticate": realm and realm.replace(f"127.0.0.1:{front.port}", "HOST")}
    seen = reply.upstream["headers"]
    return {"status": reply.status, "method": reply.upstream["method"],
            "path": reply.upstream["path"],
            **{h: seen.get(h) for h in (*COMPARED_HEADERS, "x-custom", "x-team")}}


RULES = {
    "nginx-error-page": "nginx never sends an auth_request subrequest's body: a 401 or 403 "
                        "has nginx's own error page as body (checked in view())",
    "nginx-401-only": "nginx copies WWW-Authenticate to the client on a 401 only; a 403 "
                      "(a token for another audience) has none",
    "original-path": "the upstream gets the original path: auth_request and forwardAuth "
                     "cannot rewrite it, so a token in a query parameter stays in the URL",
}
"""Differences every proxy of a kind has, applied to Envoy's answer before comparing
(docs/http-proxies.md lists them); everything else must be equal."""


def expressible(expected: dict[str, Any], proxy: str, path: str,
                applied: set[str]) -> dict[str, Any]:
    """Envoy's view as ``proxy`` can express it; the names of the rules that changed it."""
    here = dict(expected)
    if "body" in here:  # denied
        if proxy.startswith("nginx"):
            here["body"] = None
            applied.add("nginx-error-page")
            if here["status"] != 401 and here["www-authenticate"] is not None:
                here["www-authenticate"] = None
                applied.add("nginx-401-only")
        return here
    if here["path"] != path:
        here["path"] = path
        applied.add("original-path")
    return here


def nginx_routes(routes: Sequence[Route]) -> list[NginxRoute]:
    return [NginxRoute(r.prefix, r.context_extensions.get(NAMESPACE_KEY),
                       dict(parse_labels(r.context_extensions.get(LABELS_KEY, ""))))
            for r in routes]


async def fronts(start_envoy: StartEnvoy, start_nginx: StartNginx,
                 start_traefik: StartTraefik, authz_grpc: int, authz_http: int,
                 upstream: int, routes: Sequence[Route], response_headers: Sequence[str],
                 tls: AuthTls | None = None) -> tuple[Front, dict[str, Front]]:
    """Envoy on ``authz_grpc`` (the reference, plaintext) and every proxy on
    ``authz_http``, over TLS with ``tls``."""
    envoy = await start_envoy(authz_grpc, upstream, routes)
    return envoy, await proxy_fronts(start_nginx, start_traefik, authz_http, upstream,
                                     nginx_routes(routes), response_headers, tls)


async def proxy_fronts(start_nginx: StartNginx, start_traefik: StartTraefik, authz_http: int,
                       upstream: int, routes: Sequence[NginxRoute],
                       response_headers: Sequence[str], tls: AuthTls | None = None,
                       ) -> dict[str, Front]:
    """nginx in both flavours and Traefik, named as DEVIATIONS names them."""
    return {
        "nginx-ingress": await start_nginx(authz_http, upstream, routes, response_headers,
                                           style="ingress", tls=tls),
        "nginx-plain": await start_nginx(authz_http, upstream, routes, response_headers,
                                         style="plain", tls=tls),
        "traefik": await start_traefik(authz_http, upstream, routes, response_headers,
                                       tls=tls),
    }


async def compare(envoy: Front, proxies: dict[str, Front],
                  cases: dict[str, tuple[str, str, Sequence[tuple[str, str]]]],
                  applied: set[str] | None = None) -> list[str]:
    """Differences between Envoy's answers and each proxy's; ``applied`` collects the
    names of the RULES that had to be applied."""
    applied = set() if applied is None else applied
    differences = []
    for name, (method, path, headers) in cases.items():
        body = b"a body the proxy may not pass on" if method == "POST" else None
        expected = view(await envoy.send(method, path, list(headers), body), envoy, "envoy")
        for proxy, front in proxies.items():
            got = view(await front.send(method, path, list(headers), body), front, proxy)
            deviation = DEVIATIONS[proxy].get(name)
            if deviation is not None:
                if not deviation.check(expected, got):
                    differences.append(f"{proxy} {name}: documented deviation no longer "
                                       f"holds ({deviation.why}): {got}")
                continue
            expected_here = expressible(expected, proxy, path, applied)
            if got != expected_here:
                differences.append(f"{proxy} {name}:\n  envoy grpc: {expected_here}\n"
                                   f"  {proxy}: {got}")
    return differences


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES)
    return path


async def test_policy_cases_match_the_grpc_path(
    start_authz: StartAuthz, start_envoy: StartEnvoy, start_nginx: StartNginx,
    start_traefik: StartTraefik, echo_upstream: EchoUpstream, policy_file: Path,
) -> None:
    authz = await start_authz(policy_file, http_check=True)
    envoy, proxies = await fronts(start_envoy, start_nginx, start_traefik, authz.port,
                                  authz.http_check_port, echo_upstream.port, ROUTES, ())
    applied: set[str] = set()
    differences = await compare(envoy, proxies, CHECK_CASES, applied=applied)
    assert not differences, f"{len(differences)} differences\n" + "\n".join(differences)
    assert applied == {"nginx-error-page"}


def listed_headers(rules: Sequence[Rule]) -> list[str]:
    """What docs/http-proxies.md tells a user to list in auth-response-headers /
    authResponseHeaders: the headers the rules set (outputs) or remove (the token's
    places, ``Authorization`` by default and always). authz's answer carries each one
    the gRPC path sends upstream, set or kept as the client sent it."""
    names = {"authorization"}
    for rule in rules:
        names.update(name.lower() for name, _ in rule.from_headers)
        names.update(header.lower() for header, _ in rule.claim_headers)
        if rule.payload_header:
            names.add(rule.payload_header.lower())
    return sorted(names)


async def compare_token_cases(envoy: Front, proxies: dict[str, Front],
                              keys: dict[str, SigningKey], variant: str) -> None:
    """Every token case through Envoy (the reference) and each proxy: no difference,
    and only the variant's rules applied."""
    cases = {name: ("OPTIONS" if name.startswith("cors") else "GET", path,
                    list(headers.items()))
             for name, (headers, path) in token_cases(keys).items()}
    applied: set[str] = set()
    differences = await compare(envoy, proxies, cases, applied)
    assert not differences, f"{variant}: {len(differences)} differences\n" + "\n".join(
        differences)
    assert applied <= set(RULES)


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {"rs": rsa_key("rs-1"), "ps": rsa_key("ps-1", "PS256"), "ec": ec_key("ec-1"),
            "ed": ed_key("ed-1"), "rogue": rsa_key("rs-1")}


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_token_cases_match_the_grpc_path(
    variant: str, keys: dict[str, SigningKey], start_authz: StartAuthz,
    start_envoy: StartEnvoy, start_nginx: StartNginx, start_traefik: StartTraefik,
    echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    jwks = JwksServer(jwks_of(keys["rs"], keys["ps"], keys["ec"], keys["ed"]))
    await jwks.start()
    try:
        policy = tmp_path / "ra.json"
        policy.write_text(ra_policy(VARIANTS[variant], jwks.uri))
        authz = await start_authz(policy, http_check=True)
        envoy, proxies = await fronts(start_envoy, start_nginx, start_traefik, authz.port,
                                      authz.http_check_port, echo_upstream.port, (),
                                      listed_headers(VARIANTS[variant]))
        await compare_token_cases(envoy, proxies, keys, variant)
    finally:
        await jwks.stop()


TUTORIAL_HEADERS = ["x-jwt-sub", "authorization"]
"""What the tutorial's proxies copy from authz's 200 (auth-response-headers)."""


def tutorial_policies(jwks_uri: str, namespace: str = "foo") -> str:
    """Istio's JWT tutorial: a RequestAuthentication in ``namespace`` whose token is
    mandatory (DENY notRequestPrincipals ["*"])."""
    return documents(f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: {namespace}}}
spec:
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: {jwks_uri}
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
""", require_jwt(namespace=namespace))


def tutorial_jwks() -> tuple[JwksServer, str]:
    """A JWKS server for Istio's sample keys, and the sample's demo token."""
    samples = require_shared("conformance/istio-jwt-samples")
    return (JwksServer(json.loads((samples / "jwks.json").read_text())),
            (samples / "demo.jwt").read_text().strip())


async def tutorial_answers(front: Front, demo: str, proxy: str) -> None:
    """A bad token 401, a good token 200 (token removed upstream, the claim header
    authz's and not the client's), no token 403."""
    bad = await front.send("GET", "/headers", {"authorization": "Bearer deadbeef"})
    assert bad.status == 401, (proxy, bad)
    assert bad.headers["www-authenticate"].endswith('error="invalid_token"'), (proxy, bad)
    good = await front.send("GET", "/headers", {"authorization": f"Bearer {demo}",
                                                "x-jwt-sub": "forged"})
    assert good.status == 200 and good.upstream is not None, (proxy, good)
    assert "authorization" not in good.upstream["headers"], proxy
    assert good.upstream["headers"]["x-jwt-sub"] == "testing@secure.istio.io", proxy
    missing = await front.send("GET", "/headers")
    assert (missing.status, missing.upstream) == (403, None), (proxy, missing)


async def test_seed_tutorial_through_ingress_nginx_auth_url(
    start_authz: StartAuthz, start_nginx: StartNginx, echo_upstream: EchoUpstream,
    tmp_path: Path,
) -> None:
    """Istio's samples: a bad token 401, a good token 200 (token removed upstream), no
    token 403 under DENY notRequestPrincipals ["*"], through ingress-nginx's auth-url."""
    jwks, demo = tutorial_jwks()
    await jwks.start()
    try:
        (tmp_path / "p.yaml").write_text(tutorial_policies(jwks.uri))
        authz = await start_authz(tmp_path / "p.yaml", http_check=True)
        nginx = await start_nginx(authz.http_check_port, echo_upstream.port,
                                  [NginxRoute("/", "foo")], TUTORIAL_HEADERS)
        await tutorial_answers(nginx, demo, "nginx-ingress")
    finally:
        await jwks.stop()


async def test_authz_down_fails_closed_through_both_proxies(
    start_nginx: StartNginx, start_traefik: StartTraefik, echo_upstream: EchoUpstream,
) -> None:
    """No authz behind the auth URL: nginx and Traefik answer 500, the upstream sees
    nothing (Envoy, with failure_mode_allow false, answers 403)."""
    nobody = free_port()
    for front in (await start_nginx(nobody, echo_upstream.port),
                  await start_nginx(nobody, echo_upstream.port, style="plain"),
                  await start_traefik(nobody, echo_upstream.port)):
        reply = await front.send("GET", "/anything", {"authorization": "Bearer t"})
        assert (reply.status, reply.upstream) == (500, None), reply.body
    assert echo_upstream.seen == []


async def test_nginx_keeps_its_connection_to_authz_across_denies(
    start_authz: StartAuthz, start_nginx: StartNginx, echo_upstream: EchoUpstream,
    counter_for: Any, tmp_path: Path,
) -> None:
    """nginx never reads an auth subrequest's body, so an answer with one cannot leave
    the connection reusable: /nginx answers with none (nginx shows its own error page
    anyway), and 60 denies and 60 allows in turn go over the one kept-alive connection
    (with a body, each deny cost a new connection, and with TLS a new handshake)."""
    (tmp_path / "p.yaml").write_text(POLICIES)
    authz = await start_authz(tmp_path / "p.yaml", http_check=True)
    counter: ConnectionCounter = await counter_for(authz)
    nginx = await start_nginx(counter.port, echo_upstream.port, [NginxRoute("/", "foo")])
    statuses = Counter()
    for _ in range(60):
        for path in ("/admin", "/public"):
            statuses[(await nginx.send("GET", path)).status] += 1
    assert statuses == {403: 60, 200: 60}, statuses
    assert len(counter.opened) <= 2, len(counter.opened)
