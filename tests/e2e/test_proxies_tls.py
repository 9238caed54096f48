"""nginx ``auth_request`` (both flavours) and Traefik ``forwardAuth`` ask authz's HTTP
check port over TLS and mutual TLS, with the answers they give in plaintext.

The reference is Envoy over plaintext gRPC to a second authz with the same policies
(tests/e2e/test_proxies.py's differential, reused): the policies live in namespace
``edge``, which the plaintext authz uses by default. Over TLS the proxies' authz uses
``edge`` by default too; over mutual TLS it defaults to a namespace with no policy, so
the answers only match when the proxy's client certificate
(``spiffe://cluster.local/ns/edge/sa/ingress``) names the workload, as on gRPC.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz.testing.nginx import AuthTls, NginxRoute
from tests.ca import TestCA
from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.jwt_rig import JwksServer, SigningKey, jwks_of
from tests.e2e.jwt_rig import request_authentication as ra_policy
from tests.e2e.proxies import ConnectionCounter, StartNginx, StartTraefik
from tests.e2e.rig import EchoUpstream, steady_load
from tests.e2e.test_jwt import VARIANTS
from tests.e2e.test_proxies import (
    TUTORIAL_HEADERS,
    compare_token_cases,
    fronts,
    keys,  # noqa: F401 - the fixture
    listed_headers,
    proxy_fronts,
    tutorial_answers,
    tutorial_jwks,
    tutorial_policies,
)
from tests.e2e.test_tls import SecretMount, readyz, reloaded_times
from tests.policies import deny_path

pytestmark = [pytest.mark.e2e, pytest.mark.proxies]

INGRESS = "spiffe://cluster.local/ns/edge/sa/ingress"
OTHER = "spiffe://cluster.local/ns/other/sa/ingress"
DENY_SECRET = deny_path("/secret", "/scoped/secret", name="no-secret", namespace="edge")


@dataclass(frozen=True)
class Certs:
    ca: TestCA
    mount: SecretMount
    """authz's certificate, mounted as a Kubernetes Secret volume is."""
    ca_file: Path
    proxy: AuthTls
    """The proxies' settings for mutual TLS: authz's CA and name, their certificate."""

    @property
    def server_only(self) -> AuthTls:
        """The same without a client certificate (TLS, not mutual)."""
        return AuthTls(ca=self.proxy.ca, server_name=self.proxy.server_name)

    def authz_args(self, mutual: bool) -> list[str]:
        """TLS on both ports; with ``mutual``, client certificates are required and a
        request the certificate names no namespace for falls to one with no policy."""
        args = ["--tls-cert", str(self.mount.cert), "--tls-key", str(self.mount.key)]
        if mutual:
            return [*args, "--tls-client-ca", str(self.ca_file),
                    "--default-namespace", "elsewhere"]
        return [*args, "--default-namespace", "edge"]


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = TestCA()
    ca_file = ca.write(tmp_path / "ca.crt")
    cert, key = ca.client(INGRESS).write(tmp_path / "proxy", "client")
    # nginx checks DNS names only (proxy_ssl_name); the server certificate has localhost.
    return Certs(ca, SecretMount(tmp_path / "authz-tls", ca.server()), ca_file,
                 AuthTls(ca=str(ca_file), server_name="localhost", cert=str(cert),
                         key=str(key)))


@pytest.fixture(params=["tls", "mtls"])
def mutual(request: pytest.FixtureRequest) -> bool:
    return request.param == "mtls"


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_token_cases_over_tls_match_plaintext(
    variant: str, mutual: bool, keys: dict[str, SigningKey], certs: Certs,  # noqa: F811
    start_authz: StartAuthz, start_envoy: StartEnvoy, start_nginx: StartNginx,
    start_traefik: StartTraefik, echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    jwks = JwksServer(jwks_of(keys["rs"], keys["ps"], keys["ec"], keys["ed"]))
    await jwks.start()
    try:
        policy = tmp_path / "ra.json"
        policy.write_text(ra_policy(VARIANTS[variant], jwks.uri, namespace="edge"))
        plain = await start_authz(policy, args=["--default-namespace", "edge"])
        tls = await start_authz(policy, http_check=True, args=certs.authz_args(mutual))
        envoy, proxies = await fronts(
            start_envoy, start_nginx, start_traefik, plain.port, tls.http_check_port,
            echo_upstream.port, (), listed_headers(VARIANTS[variant]),
            tls=certs.proxy if mutual else certs.server_only)
        await compare_token_cases(envoy, proxies, keys, variant)
    finally:
        await jwks.stop()
    assert (await readyz(tls))["tls"]["mutual"] is mutual


async def test_seed_tutorial_over_tls(
    mutual: bool, certs: Certs, start_authz: StartAuthz, start_nginx: StartNginx,
    start_traefik: StartTraefik, echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    """Istio's JWT tutorial (401, 200, 403) through every proxy, the policies in the
    namespace the proxies' certificate names (mutual TLS) or the default one (TLS)."""
    jwks, demo = tutorial_jwks()
    await jwks.start()
    try:
        (tmp_path / "p.yaml").write_text(tutorial_policies(jwks.uri, namespace="edge"))
        authz = await start_authz(tmp_path / "p.yaml", http_check=True,
                                  args=certs.authz_args(mutual))
        proxies = await proxy_fronts(start_nginx, start_traefik, authz.http_check_port,
                                     echo_upstream.port, (), TUTORIAL_HEADERS,
                                     certs.proxy if mutual else certs.server_only)
        for name, front in proxies.items():
            await tutorial_answers(front, demo, name)
    finally:
        await jwks.stop()


async def test_the_proxys_certificate_names_its_workload(
    certs: Certs, start_authz: StartAuthz, start_nginx: StartNginx,
    start_traefik: StartTraefik, echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    """Over mutual TLS the policies of the namespace the proxy's SPIFFE id names apply
    (edge denies /secret; the default namespace has no policy); a certificate naming
    another namespace gets that namespace's (none); a location's own ``?namespace=``
    wins over the certificate."""
    (tmp_path / "p.yaml").write_text(DENY_SECRET)
    authz = await start_authz(tmp_path / "p.yaml", http_check=True,
                              args=certs.authz_args(mutual=True))
    cert, key = certs.ca.client(OTHER).write(tmp_path / "other", "client")
    other = AuthTls(ca=certs.proxy.ca, server_name="localhost", cert=str(cert), key=str(key))
    routes = [NginxRoute("/scoped", "elsewhere")]
    edge = await proxy_fronts(start_nginx, start_traefik, authz.http_check_port,
                              echo_upstream.port, routes, (), certs.proxy)
    elsewhere = await proxy_fronts(start_nginx, start_traefik, authz.http_check_port,
                                   echo_upstream.port, routes, (), other)
    answers = {}
    for who, proxies in (("edge", edge), ("other", elsewhere)):
        for name, front in proxies.items():
            for path in ("/open", "/secret", "/scoped/secret"):
                answers[(who, name, path)] = (await front.send("GET", path)).status
    expected = {(who, name, path): 403 if (who, path) == ("edge", "/secret") else 200
                for who, name, path in answers}
    assert answers == expected


async def test_a_proxy_without_a_client_certificate_fails_closed(
    certs: Certs, start_authz: StartAuthz, start_nginx: StartNginx,
    start_traefik: StartTraefik, echo_upstream: EchoUpstream, tmp_path: Path,
) -> None:
    """authz requires a client certificate: a proxy that presents none, or that trusts
    another CA than the one that signed authz's certificate, never reaches the upstream.
    nginx answers 500 (a failed auth subrequest); Traefik answers 500 as well (its
    forwardAuth turns an error calling the auth server into 500)."""
    (tmp_path / "p.yaml").write_text(DENY_SECRET)
    authz = await start_authz(tmp_path / "p.yaml", http_check=True,
                              args=certs.authz_args(mutual=True))
    stranger = TestCA("another CA").write(tmp_path / "stranger.crt")
    wrong_ca = AuthTls(ca=str(stranger), server_name="localhost", cert=certs.proxy.cert,
                       key=certs.proxy.key)
    fronts_without = await proxy_fronts(start_nginx, start_traefik, authz.http_check_port,
                                        echo_upstream.port, (), (), certs.server_only)
    fronts_wrong_ca = await proxy_fronts(start_nginx, start_traefik, authz.http_check_port,
                                         echo_upstream.port, (), (), wrong_ca)
    answers = {}
    for why, proxies in (("no client certificate", fronts_without),
                         ("another CA", fronts_wrong_ca)):
        for name, front in proxies.items():
            reply = await front.send("GET", "/open", {"authorization": "Bearer t"})
            answers[(why, name)] = reply.status
            assert reply.upstream is None, (why, name, reply)
    assert answers == dict.fromkeys(answers, 500), answers
    assert echo_upstream.seen == []


async def test_rotation_under_load_through_nginx_fails_no_request(
    certs: Certs, start_authz: StartAuthz, start_nginx: StartNginx,
    echo_upstream: EchoUpstream, counter_for: Any, tmp_path: Path,
) -> None:
    """authz's certificate is replaced (kubelet's atomic swap) while 8 clients send
    requests through nginx (ingress flavour, mutual TLS). nginx keeps connections to
    authz alive; ``keepalive_requests 20`` closes each after 20 auth subrequests, so new
    connections, each a TLS handshake, keep coming before and after the rotation. Every
    answer is the policy's: /open 200, /secret 403 (edge, named by the certificate)."""
    (tmp_path / "p.yaml").write_text(DENY_SECRET)
    authz = await start_authz(tmp_path / "p.yaml", http_check=True,
                              args=certs.authz_args(mutual=True))
    counter: ConnectionCounter = await counter_for(authz)
    nginx = await start_nginx(counter.port, echo_upstream.port, (), (), style="ingress",
                              tls=certs.proxy, keepalive_requests=20)
    first = (await readyz(authz))["tls"]["certificate"]["serial"]
    rotated = certs.ca.server()
    async with steady_load(nginx, denied_every=8) as results:
        await asyncio.sleep(1.0)
        before = sum(results.values())
        certs.mount.swap(rotated)
        await reloaded_times(authz, 1)
        reloaded, at_reload = time.monotonic(), sum(results.values())
        while sum(results.values()) < at_reload + 400:  # noqa: ASYNC110 - counting
            await asyncio.sleep(0.1)
    total = sum(results.values())
    failed = {k: v for k, v in results.items() if k not in {("/open", 200), ("/secret", 403)}}
    after = counter.since(reloaded)
    print(f"rotation through nginx: {total} requests ({before} before the swap, "
          f"{total - at_reload} after the reload), {dict(results)}; "
          f"{len(counter.opened)} connections to authz, {after} after the reload")
    assert not failed, results
    assert before >= 100 and total >= at_reload + 400
    tls = (await readyz(authz))["tls"]
    assert tls["reloads"] == 1 and tls["last_error"] is None
    assert tls["certificate"]["serial"] == format(rotated.serial, "x") != first
    # ~1 connection per 20 subrequests: handshakes kept happening after the reload.
    assert after >= 10, (after, len(counter.opened))
