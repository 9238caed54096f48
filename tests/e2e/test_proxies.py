"""nginx ``auth_request`` and Traefik ``forwardAuth`` give the gRPC path's answers.

A differential test: one authz serves gRPC (behind real Envoy, the reference) and HTTP
(behind real nginx, in ingress-nginx's ``auth-url`` and in the plain recipe's flavour, and
behind real Traefik) with the same policies; every e2e request of tests/e2e/test_check.py
and test_jwt.py goes through each, and the status, body, ``www-authenticate`` and the
headers the upstream receives must equal Envoy's.

What a proxy cannot express is listed in ``DEVIATIONS`` (and in docs/http-proxies.md);
each such case checks the proxy's own documented behaviour instead, so it still fails
when that changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz.request.scope import LABELS_KEY, NAMESPACE_KEY, parse_labels
from authz.testing.nginx import NginxRoute
from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.jwt_rig import JwksServer, SigningKey, ec_key, ed_key, jwks_of, rsa_key
from tests.e2e.jwt_rig import request_authentication as ra_policy
from tests.e2e.proxies import StartNginx, StartTraefik
from tests.e2e.rig import EchoUpstream, Front, Reply, Route
from tests.e2e.test_check import POLICIES, ROUTES
from tests.e2e.test_jwt import COMPARED_HEADERS, VARIANTS, token_cases

pytestmark = [pytest.mark.e2e, pytest.mark.proxies]

PROXIES = ("nginx-ingress", "nginx-plain", "traefik")

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


def _same_status(expected: dict[str, Any], got: dict[str, Any]) -> bool:
    return bool(expected["status"] == got["status"])


def _status_is(status: int) -> Callable[[dict[str, Any], dict[str, Any]], bool]:
    return lambda expected, got: bool(got["status"] == status)


NGINX_XFF = Deviation(
    "nginx sends its own peer as X-Real-IP / X-Forwarded-For (ingress-nginx without "
    "use-forwarded-headers): a client's X-Forwarded-For is not trusted, remote.ip is "
    "the client's address (127.0.0.1 here)", _status_is(403))
DEVIATIONS: dict[str, dict[str, Deviation]] = {
    "nginx-ingress": {"office-xff-last-in-block": NGINX_XFF},
    "nginx-plain": {"office-xff-last-in-block": NGINX_XFF},
    "traefik": {},
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


def without_body(v: dict[str, Any]) -> dict[str, Any]:
    return {**v, "body": None} if "body" in v else v


def nginx_routes(routes: Sequence[Route]) -> list[NginxRoute]:
    return [NginxRoute(r.prefix, r.context_extensions.get(NAMESPACE_KEY),
                       dict(parse_labels(r.context_extensions.get(LABELS_KEY, ""))))
            for r in routes]


async def fronts(start_envoy: StartEnvoy, start_nginx: StartNginx,
                 start_traefik: StartTraefik, authz_grpc: int, authz_http: int,
                 upstream: int, routes: Sequence[Route],
                 response_headers: Sequence[str]) -> tuple[Front, dict[str, Front]]:
    envoy = await start_envoy(authz_grpc, upstream, routes)
    scoped = nginx_routes(routes)
    return envoy, {
        "nginx-ingress": await start_nginx(authz_http, upstream, scoped, response_headers,
                                           style="ingress"),
        "nginx-plain": await start_nginx(authz_http, upstream, scoped, response_headers,
                                         style="plain"),
        "traefik": await start_traefik(authz_http, upstream, scoped, response_headers),
    }


async def compare(envoy: Front, proxies: dict[str, Front],
                  cases: dict[str, tuple[str, str, Sequence[tuple[str, str]]]]) -> list[str]:
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
            expected_here = without_body(expected) if proxy.startswith("nginx") else expected
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
    differences = await compare(envoy, proxies, CHECK_CASES)
    assert not differences, f"{len(differences)} differences\n" + "\n".join(differences)


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
                                      COMPARED_HEADERS)
        cases = {name: ("OPTIONS" if name.startswith("cors") else "GET", path,
                        list(headers.items()))
                 for name, (headers, path) in token_cases(keys).items()}
        differences = await compare(envoy, proxies, cases)
    finally:
        await jwks.stop()
    assert not differences, f"{variant}: {len(differences)} differences\n" + "\n".join(
        differences)
