"""``authz envoy-config``: a complete Envoy bootstrap for the standalone filter chain.

Built with envoy-data-plane's typed classes (never imported on the request
path), so a field name or type mistake fails here, not in Envoy. The output is
Envoy's JSON form of the v3 ``Bootstrap``: one HTTP listener whose ext_authz
filter (gRPC, transport API V3, ``failure_mode_allow: false``) asks our server,
per-route ``context_extensions`` carrying the scope, our cluster over HTTP/2
with active gRPC health checking, and an upstream cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from authz.config import ConfigError, parse_address
from authz.errors import MissingExtraError
from authz.request.scope import LABELS_KEY, NAMESPACE_KEY, ScopeError, parse_labels

__all__ = ["RouteScope", "bootstrap", "register", "run"]

HEALTH_SERVICE = "envoy.service.auth.v3.Authorization"


@dataclass(frozen=True, slots=True)
class RouteScope:
    """Requests under ``prefix`` are for the workload ``namespace`` + ``labels``."""

    prefix: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> RouteScope:
        """``/prefix=namespace`` or ``/prefix=namespace:k=v,k2=v2``."""
        prefix, sep, rest = text.partition("=")
        if not sep or not prefix.startswith("/") or not rest:
            raise ConfigError(f"--route: expected /PREFIX=NAMESPACE[:k=v,...], got {text!r}")
        namespace, _, labels = rest.partition(":")
        try:
            return cls(prefix, namespace or None, dict(parse_labels(labels)))
        except ScopeError as exc:
            raise ConfigError(f"--route {text!r}: {exc}") from None

    def context_extensions(self) -> dict[str, str]:
        out = {}
        if self.namespace:
            out[NAMESPACE_KEY] = self.namespace
        if self.labels:
            out[LABELS_KEY] = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return out


def bootstrap(
    *,
    listener_port: int,
    authz_address: tuple[str, int],
    upstream_address: tuple[str, int],
    routes: Sequence[RouteScope] = (),
    admin_port: int | None = None,
    timeout: float = 1.0,
    encode_raw_headers: bool = False,
    listener_address: str = "0.0.0.0",
    xff_num_trusted_hops: int = 0,
    health_check_interval: float = 5.0,
) -> dict[str, Any]:
    try:
        import envoy_data_plane  # noqa: F401 - the extra, asked for by name
    except ImportError as exc:
        raise MissingExtraError("envoy-config", "authz envoy-config", "envoy_data_plane") from exc
    from envoy_data_plane.envoy.config.bootstrap.v3 import (
        Admin,
        Bootstrap,
        BootstrapStaticResources,
    )
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
    from envoy_data_plane.envoy.config.core.v3 import (
        Address,
        ApiVersion,
        GrpcService,
        GrpcServiceEnvoyGrpc,
        HealthCheck,
        HealthCheckGrpcHealthCheck,
        Http2ProtocolOptions,
        SocketAddress,
    )
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        LbEndpoint,
        LocalityLbEndpoints,
    )
    from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
    from envoy_data_plane.envoy.config.route.v3 import (
        Route,
        RouteAction,
        RouteConfiguration,
        RouteMatch,
        VirtualHost,
    )
    from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
        CheckSettings,
        ExtAuthz,
        ExtAuthzPerRoute,
    )
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpConnectionManagerCodecType,
        HttpFilter,
    )
    from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
        HttpProtocolOptions,
        HttpProtocolOptionsExplicitHttpConfig,
    )
    from envoy_data_plane.google.protobuf import Any as PbAny

    def address(host: str, port: int) -> Address:
        return Address(socket_address=SocketAddress(address=host, port_value=port))

    def cluster(name: str, host: str, port: int) -> Cluster:
        return Cluster(
            name=name,
            type=ClusterDiscoveryType.STATIC,
            connect_timeout=timedelta(seconds=1),
            load_assignment=ClusterLoadAssignment(cluster_name=name, endpoints=[
                LocalityLbEndpoints(lb_endpoints=[
                    LbEndpoint(endpoint=Endpoint(address=address(host, port)))])]),
        )

    route_list = [
        Route(
            match=RouteMatch(prefix=scope.prefix),
            route=RouteAction(cluster="upstream"),
            typed_per_filter_config={"envoy.filters.http.ext_authz": PbAny.pack(ExtAuthzPerRoute(
                check_settings=CheckSettings(context_extensions=scope.context_extensions())))},
        )
        for scope in routes
    ]
    route_list.append(Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster="upstream")))
    ext_authz = ExtAuthz(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name="authz"),
            timeout=timedelta(seconds=timeout),
        ),
        transport_api_version=ApiVersion.V3,
        failure_mode_allow=False,
        encode_raw_headers=encode_raw_headers,
    )
    manager = HttpConnectionManager(
        stat_prefix="ingress",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        use_remote_address=False,
        xff_num_trusted_hops=xff_num_trusted_hops,
        route_config=RouteConfiguration(name="local", virtual_hosts=[
            VirtualHost(name="all", domains=["*"], routes=route_list)]),
        http_filters=[
            HttpFilter(name="envoy.filters.http.ext_authz", typed_config=PbAny.pack(ext_authz)),
            HttpFilter(name="envoy.filters.http.router", typed_config=PbAny.pack(Router())),
        ],
    )
    authz = cluster("authz", *authz_address)
    authz.typed_extension_protocol_options = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": PbAny.pack(HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http2_protocol_options=Http2ProtocolOptions())))}
    interval = timedelta(seconds=health_check_interval)
    authz.health_checks = [HealthCheck(
        timeout=timedelta(seconds=1), interval=interval,
        no_traffic_interval=interval,  # else Envoy probes an idle cluster once a minute
        unhealthy_threshold=1, healthy_threshold=1,
        grpc_health_check=HealthCheckGrpcHealthCheck(service_name=HEALTH_SERVICE),
    )]
    config = Bootstrap(static_resources=BootstrapStaticResources(
        listeners=[Listener(
            name="ingress",
            address=address(listener_address, listener_port),
            filter_chains=[FilterChain(filters=[Filter(
                name="envoy.filters.network.http_connection_manager",
                typed_config=PbAny.pack(manager))])],
        )],
        clusters=[authz, cluster("upstream", *upstream_address)],
    ))
    if admin_port is not None:
        config.admin = Admin(address=address("127.0.0.1", admin_port))
    out: dict[str, Any] = config.to_dict()
    return out


def run(args: argparse.Namespace) -> int:
    try:
        routes = [RouteScope.parse(r) for r in args.route or []]
        config = bootstrap(
            listener_port=args.listener_port,
            authz_address=parse_address(args.authz_address, "--authz-address"),
            upstream_address=parse_address(args.upstream_address, "--upstream-address"),
            routes=routes,
            admin_port=args.admin_port,
            timeout=args.timeout,
            encode_raw_headers=args.encode_raw_headers,
            listener_address=args.listener_address,
            xff_num_trusted_hops=args.xff_num_trusted_hops,
            health_check_interval=args.health_check_interval,
        )
    except ConfigError as exc:
        print(f"authz envoy-config: {exc}", file=sys.stderr)
        return 2
    if args.format == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    else:
        sys.stdout.write(json.dumps(config, indent=2) + "\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "envoy-config",
        help="print an Envoy bootstrap that sends every request through authz",
        description="Print a complete Envoy v3 bootstrap for the standalone filter chain: an "
        "HTTP listener with ext_authz (gRPC, transport V3, failure_mode_allow: false) pointing "
        "at authz, per-route scopes, an HTTP/2 authz cluster with gRPC health checks, and an "
        "upstream cluster. Check it with: envoy --mode validate -c FILE.",
    )
    p.add_argument("--listener-port", type=int, default=8080)
    p.add_argument("--listener-address", default="0.0.0.0")
    p.add_argument("--authz-address", default="127.0.0.1:9000", help="our gRPC address")
    p.add_argument("--upstream-address", required=True, help="the service behind Envoy")
    p.add_argument("--route", action="append", metavar="/PREFIX=NAMESPACE[:k=v,...]",
                   help="requests under PREFIX are checked as the workload NAMESPACE with "
                   "these labels (repeatable; others use authz's default namespace)")
    p.add_argument("--admin-port", type=int, help="Envoy admin on 127.0.0.1 (off by default)")
    p.add_argument("--timeout", type=float, default=1.0, help="ext_authz gRPC timeout, seconds")
    p.add_argument("--encode-raw-headers", action="store_true")
    p.add_argument("--xff-num-trusted-hops", type=int, default=0)
    p.add_argument("--health-check-interval", type=float, default=5.0)
    p.add_argument("--format", choices=("json", "yaml"), default="json")
    p.set_defaults(func=run)
