"""Client -> real Envoy -> ext_authz -> our server -> Envoy -> upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.testing.ports import free_port
from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.rig import EchoUpstream, Route, wait_until
from tests.policies import deny_path, require_jwt

pytestmark = pytest.mark.e2e

POLICIES = deny_path("/admin", name="block-admin", namespace="istio-system") + """\
---
""" + require_jwt(namespace="shop") + """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: header-gate, namespace: web}
spec:
  selector: {matchLabels: {app: frontend}}
  rules:
  - when:
    - key: request.headers[x-team]
      values: ["blue"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: office-only, namespace: office}
spec:
  rules:
  - from:
    - source: {remoteIpBlocks: ["203.0.113.0/24"]}
"""

ROUTES = (
    Route("/shop/", {"namespace": "shop"}),
    Route("/web/", {"namespace": "web", "labels": "app=frontend,version=v1"}),
    Route("/office/", {"namespace": "office"}),
)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES)
    return path


async def test_allowed_request_reaches_upstream_with_its_headers(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream
) -> None:
    authz = await start_authz()
    envoy = await start_envoy(authz.port, echo_upstream.port)
    reply = await envoy.send(
        "GET", "/hello?x=1", {"x-custom": "kept", "authorization": "Bearer t"}
    )
    assert reply.status == 200
    assert reply.upstream is not None
    assert reply.upstream["path"] == "/hello?x=1"
    assert reply.upstream["headers"]["x-custom"] == "kept"
    # No RequestAuthentication: the token is not ours to strip.
    assert reply.upstream["headers"]["authorization"] == "Bearer t"


async def test_deny_reaches_client_with_status_and_body(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    policy_file: Path,
) -> None:
    authz = await start_authz(policy_file)
    envoy = await start_envoy(authz.port, echo_upstream.port, ROUTES)
    reply = await envoy.send("GET", "/admin")
    assert (reply.status, reply.body, reply.upstream) == (403, "RBAC: access denied", None)
    assert echo_upstream.seen == []


async def test_route_scope_selects_policies(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    policy_file: Path,
) -> None:
    authz = await start_authz(policy_file)
    envoy = await start_envoy(authz.port, echo_upstream.port, ROUTES)
    # namespace shop: DENY notRequestPrincipals ["*"] and no token -> 403
    assert (await envoy.send("GET", "/shop/cart")).status == 403
    # the default route has no namespace extension: namespace "default", no policy
    assert (await envoy.send("GET", "/cart")).status == 200
    # namespace web, labels app=frontend: ALLOW only with x-team: blue
    assert (await envoy.send("GET", "/web/", {"x-team": "red"})).status == 403
    assert (await envoy.send("GET", "/web/", {"x-team": "blue"})).status == 200


@pytest.mark.parametrize("raw", [False, True], ids=["headers-map", "encode_raw_headers"])
async def test_header_modes_and_repeated_headers(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    policy_file: Path, raw: bool,
) -> None:
    authz = await start_authz(policy_file)
    envoy = await start_envoy(authz.port, echo_upstream.port, ROUTES, encode_raw_headers=raw)
    assert (await envoy.send("GET", "/web/", [("X-Team", "blue")])).status == 200
    # Repeated header: Envoy (and our raw mode) join with ",": "blue,red" is not "blue".
    both = await envoy.send("GET", "/web/", [("x-team", "blue"), ("x-team", "red")])
    assert both.status == 403


async def test_remote_ip_blocks_use_x_forwarded_for_like_envoy(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    policy_file: Path,
) -> None:
    authz = await start_authz(policy_file)
    envoy = await start_envoy(authz.port, echo_upstream.port, ROUTES)
    ok = await envoy.send("GET", "/office/", {"x-forwarded-for": "198.51.100.1, 203.0.113.7"})
    assert ok.status == 200
    no = await envoy.send("GET", "/office/", {"x-forwarded-for": "203.0.113.7, 198.51.100.1"})
    assert no.status == 403
    assert (await envoy.send("GET", "/office/")).status == 403  # peer 127.0.0.1


async def test_server_down_fails_closed(
    start_envoy: StartEnvoy, echo_upstream: EchoUpstream
) -> None:
    envoy = await start_envoy(free_port(), echo_upstream.port, wait_healthy=False)
    reply = await envoy.send("GET", "/anything")
    assert reply.status == 403  # Envoy's status_on_error with failure_mode_allow: false
    assert reply.upstream is None and echo_upstream.seen == []


async def test_draining_server_is_taken_out_by_envoy_health_check(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream
) -> None:
    authz = await start_authz(args=["--drain-delay", "3"])
    envoy = await start_envoy(authz.port, echo_upstream.port)
    assert (await envoy.send("GET", "/")).status == 200
    authz.process.proc.terminate()

    async def unhealthy() -> bool:
        return not await envoy.authz_healthy()

    await wait_until("envoy marks authz unhealthy", unhealthy, limit=10)
    assert authz.process.proc.wait(15) == 0
