"""``authz envoy-config``: a complete Envoy bootstrap for the standalone filter chain.

Built with envoy-data-plane's typed classes (never imported on the request
path), so a field name or type mistake fails here, not in Envoy. The output is
Envoy's JSON form of the v3 ``Bootstrap``: one HTTP listener whose ext_authz
filter (gRPC, transport API V3, ``failure_mode_allow: false``) asks our server,
per-route ``context_extensions`` carrying the scope, our cluster over HTTP/2
with active gRPC health checking, and an upstream cluster. With ``--authz-tls-ca``
the authz cluster speaks TLS (an ``UpstreamTlsContext`` that verifies authz's
certificate and name), and with ``--authz-tls-cert``/``--authz-tls-key`` mutual TLS.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from authz.config import ConfigError, format_address, parse_address
from authz.errors import MissingExtraError
from authz.policy.errors import PolicyErrors
from authz.request.scope import LABELS_KEY, NAMESPACE_KEY, ScopeError, parse_labels

__all__ = ["REQUESTS_PER_CONNECTION", "STREAMS_PER_CONNECTION", "RouteScope", "bootstrap",
           "register", "run"]

HEALTH_SERVICE = "envoy.service.auth.v3.Authorization"
TRANSPORTS = ("grpc", "http")
ENVOY_PATH_PREFIX = "/envoy"
"""authz's front door for Envoy ``http_service`` (authz/http/frontdoors.py)."""
SCOPE_METADATA = "authz"
"""Route metadata namespace whose ``namespace``/``labels`` the HTTP check carries."""
HTTP_CHECK_HEADERS = {
    "x-authz-namespace": f"%METADATA(ROUTE:{SCOPE_METADATA}:namespace)%",
    "x-authz-labels": f"%METADATA(ROUTE:{SCOPE_METADATA}:labels)%",
    "x-authz-source-address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "x-authz-destination-address": "%DOWNSTREAM_LOCAL_ADDRESS%",
}
"""What Envoy adds to each HTTP check: the route's scope, the downstream peer and the
local address it connected to (the same names are never taken from the client:
``disallowed_headers``)."""
HTTP_IDLE_TIMEOUT = 60.0
HTTP_HEALTH_PATH = "/readyz"

STREAMS_PER_CONNECTION = 4
"""Concurrent Checks Envoy puts on one HTTP/2 connection to authz before it opens
another. With ``--workers N`` the kernel spreads connections, not requests, over
authz's processes, and without a limit each Envoy worker thread keeps a single
connection: every Check it sends lands on one authz process. A small limit makes a
busy Envoy open several connections, which the kernel spreads over every worker
(docs/envoy-contract.md, "Spreading load over workers")."""

CHECK_RETRIES = 2
"""Times Envoy sends a Check again when the first try never got an answer (the
connection was refused or reset, the stream refused, gRPC ``UNAVAILABLE``). A
Check is a read: answering it twice changes nothing, so a killed or restarting
authz process costs a retry, not a failed request (docs/envoy-contract.md,
"Retries"). Istio's default for its own routes is two retries too."""
RETRY_ON = {"grpc": "reset,connect-failure,refused-stream,unavailable",
            "http": "reset,connect-failure,refused-stream"}
"""Only failures where authz gave no answer: never a deny, and never an HTTP 5xx
from the check port (authz's own fail-closed answer is an answer)."""
RETRY_BACK_OFF = (timedelta(milliseconds=25), timedelta(milliseconds=250))
"""The router's default base interval; the core ``RetryPolicy`` would otherwise
wait 1 s, the whole Check timeout."""
MAX_RETRIES = 4_294_967_295
"""The authz cluster's concurrent-retry limit, as Istio sets it on every cluster.
Envoy's default of 3 would fail closed all but three of the Checks in flight on a
connection that breaks; ``CHECK_RETRIES`` already bounds the cost (at most three
tries a Check)."""

REQUESTS_PER_CONNECTION = 1_000
"""Checks per connection before Envoy replaces it: a new connection is hashed to a
worker afresh, so an uneven draw, or a worker that restarted after Envoy connected,
evens out within seconds at load instead of lasting as long as the connection."""


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


TLS_VERSIONS = {"1.2": "TLSv1_2", "1.3": "TLSv1_3"}


@dataclass(frozen=True, slots=True)
class AuthzTls:
    """How Envoy reaches authz over TLS: whom it trusts, what name it expects, and
    (for mutual TLS) the certificate it presents."""

    ca: str
    """PEM bundle that signed authz's certificate (``--tls-cert``)."""
    server_name: str
    """SNI and the subject alternative name authz's certificate must carry (DNS or IP)."""
    cert: str | None = None
    key: str | None = None
    min_version: str = "1.2"

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ConfigError("--authz-tls-cert and --authz-tls-key go together")
        if self.min_version not in TLS_VERSIONS:
            raise ConfigError(f"--authz-tls-min-version: expected 1.2 or 1.3, "
                              f"got {self.min_version!r}")
        if not self.server_name:
            raise ConfigError("--authz-tls-server-name must not be empty")

    @property
    def server_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.server_name)
        except ValueError:
            return False
        return True

    def transport_socket(self, transport: str = "grpc") -> dict[str, Any]:
        """The authz cluster's ``transport_socket`` in Envoy's JSON form; ``transport``
        says which protocol ALPN offers (h2 for gRPC, http/1.1 for http_service)."""
        from envoy_data_plane.envoy.config.core.v3 import DataSource, TransportSocket
        from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
            CertificateValidationContext,
            CommonTlsContext,
            SubjectAltNameMatcher,
            SubjectAltNameMatcherSanType,
            TlsCertificate,
            TlsParameters,
            TlsParametersTlsProtocol,
            UpstreamTlsContext,
        )
        from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
        from envoy_data_plane.google.protobuf import Any as PbAny

        san_type = (SubjectAltNameMatcherSanType.IP_ADDRESS if self.server_is_ip
                    else SubjectAltNameMatcherSanType.DNS)
        common = CommonTlsContext(
            # gRPC over TLS is HTTP/2 by ALPN; the HTTP check port speaks HTTP/1.1.
            alpn_protocols=["http/1.1" if transport == "http" else "h2"],
            tls_params=TlsParameters(tls_minimum_protocol_version=getattr(
                TlsParametersTlsProtocol, TLS_VERSIONS[self.min_version])),
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=self.ca),
                # Without a name to match, any certificate the CA signed would do.
                match_typed_subject_alt_names=[SubjectAltNameMatcher(
                    san_type=san_type, matcher=StringMatcher(exact=self.server_name))],
            ),
        )
        if self.cert and self.key:
            common.tls_certificates = [TlsCertificate(
                certificate_chain=DataSource(filename=self.cert),
                private_key=DataSource(filename=self.key))]
        context = UpstreamTlsContext(common_tls_context=common)
        if not self.server_is_ip:
            context.sni = self.server_name
        out: dict[str, Any] = TransportSocket(
            name="envoy.transport_sockets.tls", typed_config=PbAny.pack(context)).to_dict()
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
    authz_tls: AuthzTls | None = None,
    transport: str = "grpc",
    upstream_headers: Sequence[str] = (),
    streams_per_connection: int | None = STREAMS_PER_CONNECTION,
    requests_per_connection: int | None = REQUESTS_PER_CONNECTION,
) -> dict[str, Any]:
    """``transport``: ``grpc`` (ext_authz ``grpc_service``) or ``http`` (``http_service``
    at authz's ``--http-check-address``, path prefix ``/envoy``). ``upstream_headers``:
    for ``http``, the headers authz's allow may set upstream (``outputClaimToHeaders``,
    ``outputPayloadToHeader``): Envoy copies only those it is told about.
    ``streams_per_connection`` (HTTP/2, so gRPC only) and ``requests_per_connection``
    (None: Envoy's default, no limit) spread Checks over authz's worker processes (see
    :data:`STREAMS_PER_CONNECTION`)."""
    if transport not in TRANSPORTS:
        raise ConfigError(f"--transport: expected {' or '.join(TRANSPORTS)}, got {transport!r}")
    try:
        import envoy_data_plane  # noqa: F401 - the extra, asked for by name
    except ImportError as exc:
        raise MissingExtraError("envoy-config", "authz envoy-config", "envoy_data_plane") from exc
    from envoy_data_plane.envoy.config.bootstrap.v3 import (
        Admin,
        Bootstrap,
        BootstrapStaticResources,
    )
    from envoy_data_plane.envoy.config.cluster.v3 import (
        CircuitBreakers,
        CircuitBreakersThresholds,
        Cluster,
        ClusterDiscoveryType,
    )
    from envoy_data_plane.envoy.config.core.v3 import (
        Address,
        ApiVersion,
        BackoffStrategy,
        GrpcService,
        GrpcServiceEnvoyGrpc,
        HeaderValue,
        HealthCheck,
        HealthCheckGrpcHealthCheck,
        HealthCheckHttpHealthCheck,
        Http1ProtocolOptions,
        Http2ProtocolOptions,
        HttpUri,
        Metadata,
        RetryPolicy,
        RetryPolicyRetryHostPredicate,
        SocketAddress,
    )
    from envoy_data_plane.envoy.config.core.v3 import (
        HttpProtocolOptions as CoreHttpProtocolOptions,
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
        AuthorizationRequest,
        AuthorizationResponse,
        CheckSettings,
        ExtAuthz,
        ExtAuthzPerRoute,
        HttpService,
    )
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpConnectionManagerCodecType,
        HttpFilter,
    )
    from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import (
        PreviousHostsPredicate,
    )
    from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
        HttpProtocolOptions,
        HttpProtocolOptionsExplicitHttpConfig,
    )
    from envoy_data_plane.envoy.type.matcher.v3 import (
        ListStringMatcher,
        RegexMatcher,
        StringMatcher,
    )
    from envoy_data_plane.google.protobuf import Any as PbAny
    from envoy_data_plane.google.protobuf import Struct, Value

    def address(host: str, port: int) -> Address:
        return Address(socket_address=SocketAddress(address=host, port_value=port))

    def cluster(name: str, host: str, port: int) -> Cluster:
        """STATIC for an IP address; a DNS name (a Kubernetes Service, a headless
        Service's several pods) is resolved and re-resolved by Envoy (STRICT_DNS:
        every address the name has gets traffic). STATIC would refuse the name."""
        try:
            ipaddress.ip_address(host)
            kind = ClusterDiscoveryType.STATIC
        except ValueError:
            kind = ClusterDiscoveryType.STRICT_DNS
        return Cluster(
            name=name,
            type=kind,
            connect_timeout=timedelta(seconds=1),
            load_assignment=ClusterLoadAssignment(cluster_name=name, endpoints=[
                LocalityLbEndpoints(lb_endpoints=[
                    LbEndpoint(endpoint=Endpoint(address=address(host, port)))])]),
        )

    http = transport == "http"
    retry = RetryPolicy(
        retry_on=RETRY_ON[transport], num_retries=CHECK_RETRIES,
        retry_back_off=BackoffStrategy(base_interval=RETRY_BACK_OFF[0],
                                       max_interval=RETRY_BACK_OFF[1]),
        # Another authz host when there is one (a headless Service's pods).
        retry_host_predicate=[RetryPolicyRetryHostPredicate(
            name="envoy.retry_host_predicates.previous_hosts",
            typed_config=PbAny.pack(PreviousHostsPredicate()))],
        host_selection_retry_max_attempts=5,
    )

    def route_scope(scope: RouteScope) -> dict[str, Any]:
        """gRPC: the scope in ``context_extensions``. HTTP: in the route's metadata,
        which the filter's ``headers_to_add`` sends as ``x-authz-namespace``/``-labels``."""
        if http:
            fields = {k: Value(string_value=v) for k, v in scope.context_extensions().items()}
            return {"metadata": Metadata(
                filter_metadata={SCOPE_METADATA: Struct(fields=fields)})}
        return {"typed_per_filter_config": {
            "envoy.filters.http.ext_authz": PbAny.pack(ExtAuthzPerRoute(
                check_settings=CheckSettings(context_extensions=scope.context_extensions())))}}

    route_list = [
        Route(match=RouteMatch(prefix=scope.prefix), route=RouteAction(cluster="upstream"),
              **route_scope(scope))
        for scope in routes
    ]
    route_list.append(Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster="upstream")))
    if http:
        ext_authz = ExtAuthz(
            http_service=HttpService(
                server_uri=HttpUri(uri=f"http://{format_address(*authz_address)}",
                                   cluster="authz", timeout=timedelta(seconds=timeout)),
                path_prefix=ENVOY_PATH_PREFIX,
                retry_policy=retry,
                authorization_request=AuthorizationRequest(headers_to_add=[
                    HeaderValue(key=header, value=value)
                    for header, value in HTTP_CHECK_HEADERS.items()]),
                authorization_response=AuthorizationResponse(
                    allowed_upstream_headers=ListStringMatcher(patterns=[
                        StringMatcher(exact=h.lower(), ignore_case=True)
                        for h in upstream_headers])
                    if upstream_headers else None),
            ),
            transport_api_version=ApiVersion.V3,
            failure_mode_allow=False,
            # Every request header goes to authz, as the gRPC check sends them (policies
            # and token locations may read any); none that would name a scope.
            allowed_headers=ListStringMatcher(patterns=[StringMatcher(safe_regex=RegexMatcher(regex=".*"))]),
            disallowed_headers=ListStringMatcher(patterns=[
                StringMatcher(exact=h) for h in HTTP_CHECK_HEADERS]),
        )
    else:
        ext_authz = ExtAuthz(
            grpc_service=GrpcService(
                envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name="authz"),
                timeout=timedelta(seconds=timeout),
                retry_policy=retry,
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
    authz.circuit_breakers = CircuitBreakers(thresholds=[
        CircuitBreakersThresholds(max_retries=MAX_RETRIES)])
    interval = timedelta(seconds=health_check_interval)
    if http:
        # HTTP/1.1 keep-alive, closed by Envoy before authz's idle timeout can race a
        # request (authz/http/protocol.py IDLE_TIMEOUT).
        # One connection per Check in flight (HTTP/1.1): the kernel spreads them over
        # authz's --workers without a stream limit.
        common = CoreHttpProtocolOptions(idle_timeout=timedelta(seconds=HTTP_IDLE_TIMEOUT))
        if requests_per_connection is not None:
            common.max_requests_per_connection = requests_per_connection
        authz.typed_extension_protocol_options = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": PbAny.pack(
                HttpProtocolOptions(
                    common_http_protocol_options=common,
                    explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                        http_protocol_options=Http1ProtocolOptions())))}
        # The check port's /readyz: 503 while authz is not ready or drains, as the
        # gRPC health service says NOT_SERVING (docs/http-front-door.md).
        authz.health_checks = [HealthCheck(
            timeout=timedelta(seconds=1), interval=interval,
            no_traffic_interval=interval,  # else Envoy probes an idle cluster once a minute
            unhealthy_threshold=1, healthy_threshold=1,
            http_health_check=HealthCheckHttpHealthCheck(path=HTTP_HEALTH_PATH),
        )]
    else:
        http2 = Http2ProtocolOptions()
        if streams_per_connection is not None:
            http2.max_concurrent_streams = streams_per_connection
        protocol = HttpProtocolOptions(explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=http2))
        if requests_per_connection is not None:
            protocol.common_http_protocol_options = CoreHttpProtocolOptions(
                max_requests_per_connection=requests_per_connection)
        authz.typed_extension_protocol_options = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": PbAny.pack(protocol)}
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
    if authz_tls is not None:
        for built in out["staticResources"]["clusters"]:
            if built["name"] == "authz":
                built["transportSocket"] = authz_tls.transport_socket(transport)
    return out


def upstream_headers(args: argparse.Namespace) -> list[str]:
    """``--upstream-header`` names, and the output headers of ``--policy``'s rules."""
    names = [h.lower() for h in args.upstream_header or []]
    if args.policy:
        from authz.pipeline.snapshot import compile_snapshot
        from authz.policy.load import load_paths

        snapshot = compile_snapshot(load_paths(args.policy), 1)
        for rule in snapshot.jwt_rules:
            names += [c.header.lower() for c in rule.output_claim_to_headers]
            if rule.output_payload_to_header:
                names.append(rule.output_payload_to_header.lower())
    return sorted(set(names))


def run(args: argparse.Namespace) -> int:
    try:
        routes = [RouteScope.parse(r) for r in args.route or []]
        for flag, value in (("--authz-streams-per-connection", args.authz_streams_per_connection),
                            ("--authz-requests-per-connection",
                             args.authz_requests_per_connection)):
            if value < 0:
                raise ConfigError(f"{flag}: expected 0 (no limit) or more, got {value}")
        authz_address = parse_address(args.authz_address, "--authz-address")
        authz_tls = None
        if args.authz_tls_ca:
            authz_tls = AuthzTls(
                ca=args.authz_tls_ca, cert=args.authz_tls_cert, key=args.authz_tls_key,
                server_name=args.authz_tls_server_name or authz_address[0],
                min_version=args.authz_tls_min_version)
        elif args.authz_tls_cert or args.authz_tls_key or args.authz_tls_server_name:
            raise ConfigError("--authz-tls-cert, --authz-tls-key and --authz-tls-server-name "
                              "need --authz-tls-ca (the CA that signed authz's certificate)")
        config = bootstrap(
            listener_port=args.listener_port,
            authz_address=authz_address,
            upstream_address=parse_address(args.upstream_address, "--upstream-address"),
            routes=routes,
            admin_port=args.admin_port,
            timeout=args.timeout,
            encode_raw_headers=args.encode_raw_headers,
            listener_address=args.listener_address,
            xff_num_trusted_hops=args.xff_num_trusted_hops,
            health_check_interval=args.health_check_interval,
            authz_tls=authz_tls,
            transport=args.transport,
            upstream_headers=upstream_headers(args),
            streams_per_connection=args.authz_streams_per_connection or None,
            requests_per_connection=args.authz_requests_per_connection or None,
        )
    except ConfigError as exc:
        print(f"authz envoy-config: {exc}", file=sys.stderr)
        return 2
    except PolicyErrors as exc:
        print(f"authz envoy-config: policies rejected:\n{exc}", file=sys.stderr)
        return 1
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
    p.add_argument("--transport", choices=TRANSPORTS, default="grpc",
                   help="how Envoy asks authz: grpc (ext_authz grpc_service, authz's "
                   "--grpc-address) or http (http_service with path prefix /envoy, authz's "
                   "--http-check-address; the route's scope in x-authz-namespace/-labels)")
    p.add_argument("--authz-address", default="127.0.0.1:9000",
                   help="authz's --grpc-address, or with --transport http its "
                   "--http-check-address")
    p.add_argument("--upstream-header", action="append", metavar="NAME",
                   help="with --transport http: a header authz's allow sets upstream "
                   "(outputClaimToHeaders, outputPayloadToHeader), which Envoy copies only "
                   "when told (repeatable)")
    p.add_argument("--policy", action="append", metavar="PATH",
                   help="with --transport http: policy files or directories whose "
                   "RequestAuthentication output headers Envoy copies upstream (repeatable)")
    p.add_argument("--upstream-address", required=True, help="the service behind Envoy")
    p.add_argument("--route", action="append", metavar="/PREFIX=NAMESPACE[:k=v,...]",
                   help="requests under PREFIX are checked as the workload NAMESPACE with "
                   "these labels (repeatable; others use authz's default namespace)")
    p.add_argument("--admin-port", type=int, help="Envoy admin on 127.0.0.1 (off by default)")
    p.add_argument("--timeout", type=float, default=1.0, help="ext_authz gRPC timeout, seconds")
    p.add_argument("--encode-raw-headers", action="store_true")
    p.add_argument("--xff-num-trusted-hops", type=int, default=0)
    p.add_argument("--health-check-interval", type=float, default=5.0)
    p.add_argument("--authz-streams-per-connection", type=int, default=STREAMS_PER_CONNECTION,
                   metavar="N", help="gRPC: concurrent Checks per HTTP/2 connection to authz "
                   "before Envoy opens another, so that a busy Envoy reaches every --workers "
                   "process (0: no limit, one connection per Envoy worker thread; --transport "
                   "http opens one connection per Check in flight anyway)")
    p.add_argument("--authz-requests-per-connection", type=int,
                   default=REQUESTS_PER_CONNECTION, metavar="N",
                   help="Checks per connection to authz before Envoy replaces it, which "
                   "evens out the kernel's spreading over workers (0: no limit)")
    tls = p.add_argument_group(
        "TLS to authz", "when authz serves --tls-cert (and --tls-client-ca for mutual TLS)")
    tls.add_argument("--authz-tls-ca", metavar="PATH",
                     help="CA bundle that signed authz's certificate: the authz cluster "
                     "speaks TLS and verifies it")
    tls.add_argument("--authz-tls-server-name", metavar="NAME",
                     help="name authz's certificate must carry (DNS or IP SAN), sent as SNI "
                     "when a DNS name (default: the host of --authz-address)")
    tls.add_argument("--authz-tls-cert", metavar="PATH",
                     help="Envoy's client certificate chain for mutual TLS")
    tls.add_argument("--authz-tls-key", metavar="PATH", help="its private key")
    tls.add_argument("--authz-tls-min-version", choices=tuple(TLS_VERSIONS), default="1.2",
                     help="lowest TLS version Envoy offers (authz accepts 1.2 and 1.3)")
    p.add_argument("--format", choices=("json", "yaml"), default="json")
    p.set_defaults(func=run)
