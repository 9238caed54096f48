"""Real nginx on loopback in front of an upstream, asking authz's ``/nginx`` with ``auth_request``.

Debian's ``nginx`` runs unprivileged-style: its own prefix directory (``-p``) and a
generated configuration (``-c``), loopback ports only, every temporary path inside
the prefix, logs to stderr, no daemon. Two flavours of the auth subrequest:

- ``plain``: the recipe of nginx's own documentation and most blog posts,
  ``X-Original-URI`` + ``Host`` + ``X-Original-Method`` + ``X-Real-IP``;
- ``ingress``: what ingress-nginx's template writes for the ``auth-url`` annotation:
  ``X-Original-URL`` (absolute), ``X-Original-Method``, ``X-Sent-From``,
  ``X-Real-IP``, ``X-Forwarded-For``, ``X-Auth-Request-Redirect``, the ``Host`` of the
  auth URL, and ``auth-response-headers`` copied with ``auth_request_set`` +
  ``proxy_set_header`` (an empty value sends no header, so a client's copy of a
  listed header never reaches the upstream).

With ``tls`` the subrequest goes to ``https://authz`` and checks authz's certificate
(``proxy_ssl_verify``, the CA, the name it must carry); with a client certificate as
well, authz (``--tls-client-ca``) sees the proxy's identity. In the ``ingress`` flavour
those lines are the ``auth-snippet`` annotation's text, which ingress-nginx's template
writes into the auth location just before ``proxy_pass $target``, after its own
``proxy_ssl_server_name on;``.

On a deny nginx answers with the subrequest's status (401 or 403) and, for a 401,
the subrequest's ``WWW-Authenticate``; the body is nginx's own error page, since an
``auth_request`` subrequest's body is never sent to the client. Anything else from
the auth service becomes a 500.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

__all__ = ["AuthTls", "NginxRoute", "auth_query", "auth_tls_lines", "nginx_argv",
           "nginx_binary", "nginx_config", "write_prefix"]

STYLES = ("plain", "ingress")


def nginx_binary() -> str | None:
    """Debian's ``/usr/sbin/nginx`` (not on a non-root PATH), else PATH's ``nginx``."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


@dataclass(frozen=True)
class NginxRoute:
    """A path prefix and the scope its auth subrequest asks for (one ``auth-url`` each)."""

    prefix: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthTls:
    """How the proxy reaches authz's HTTP check port over TLS: the CA that signed
    authz's certificate, the name that certificate must carry and, for mutual TLS,
    the proxy's own certificate and key (files the proxy reads)."""

    ca: str
    server_name: str
    """nginx checks this DNS name (``proxy_ssl_name``; nginx matches DNS names only) and
    sends it as SNI. Traefik has no such option: it checks the host of its address."""
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate needs its key, and a key its certificate")


def auth_tls_lines(tls: AuthTls, *, server_name: bool = True) -> list[str]:
    """The ``proxy_ssl_*`` directives of the auth location. ``server_name=False`` leaves
    out ``proxy_ssl_server_name on;``: ingress-nginx's auth location has it already and
    nginx refuses a directive twice, so an ``auth-snippet`` must not repeat it."""
    lines = [
        "proxy_ssl_verify on;",
        f"proxy_ssl_trusted_certificate {tls.ca};",
        f"proxy_ssl_name {tls.server_name};",
        *(["proxy_ssl_server_name on;"] if server_name else []),
        "proxy_ssl_protocols TLSv1.2 TLSv1.3;",
        "proxy_ssl_session_reuse on;",
    ]
    if tls.cert and tls.key:
        lines += [f"proxy_ssl_certificate {tls.cert};",
                  f"proxy_ssl_certificate_key {tls.key};"]
    return lines


def auth_query(namespace: str | None, labels: Mapping[str, str]) -> str:
    """``?namespace=NS&labels=k%3Dv,k2%3Dv2`` (empty without a scope)."""
    params = {}
    if namespace:
        params["namespace"] = namespace
    if labels:
        params["labels"] = ",".join(f"{k}={v}" for k, v in labels.items())
    return "?" + urlencode(params, safe=",", quote_via=quote) if params else ""


def _variable(header: str) -> str:
    return "$authz_" + header.lower().replace("-", "_")


def _auth_location(name: str, authz: str, query: str, style: str,
                   tls: AuthTls | None) -> str:
    scheme = "https" if tls else "http"
    common = """\
        internal;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_http_version 1.1;
        proxy_set_header Connection "";"""
    if style == "ingress":
        # ingress-nginx's auth-url location (rootfs/etc/nginx/template/nginx.tmpl).
        headers = f"""\
        proxy_set_header Host {authz};
        proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Sent-From "nginx-ingress-controller";
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Auth-Request-Redirect $request_uri;
        proxy_ssl_server_name on;"""
        # The auth-snippet annotation's text, verbatim, then the auth-url (kept in an
        # upstream with auth-keepalive, so its host is the upstream's name).
        snippet = "".join(f"\n        {line}" for line in (
            auth_tls_lines(tls, server_name=False) if tls else ()))
        return f"""\
    location = {name} {{
{common}
{headers}{snippet}
        set $target {scheme}://authz/nginx{query};
        proxy_pass $target;
    }}
"""
    else:
        headers = """\
        proxy_set_header Host $http_host;
        proxy_set_header X-Original-URI $request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Real-IP $remote_addr;"""
    ssl = "".join(f"\n        {line}" for line in (auth_tls_lines(tls) if tls else ()))
    return f"""\
    location = {name} {{
{common}
{headers}{ssl}
        proxy_pass {scheme}://authz/nginx{query};
    }}
"""


def nginx_config(*, prefix: Path, listen_port: int, authz_port: int, upstream_port: int,
                 routes: Sequence[NginxRoute] = (), response_headers: Sequence[str] = (),
                 style: str = "ingress", tls: AuthTls | None = None,
                 keepalive_requests: int = 0) -> str:
    """The whole ``nginx.conf``: every route (and ``/``, unscoped) behind ``auth_request``.

    ``response_headers`` are the headers of authz's 200 copied onto the upstream request
    (ingress-nginx's ``auth-response-headers``). ``keepalive_requests`` (0: nginx's
    default, 1000) closes a kept-alive connection to authz after that many requests, so
    that new connections, and new TLS handshakes, keep happening under steady load
    (ingress-nginx's ``auth-keepalive-requests``).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    authz = f"127.0.0.1:{authz_port}"
    all_routes = [*sorted(routes, key=lambda r: -len(r.prefix))]
    if not any(r.prefix == "/" for r in all_routes):
        all_routes.append(NginxRoute("/"))
    copies = "\n".join(
        f"        auth_request_set {_variable(h)} $upstream_http_{h.lower().replace('-', '_')};\n"
        f"        proxy_set_header {h} {_variable(h)};" for h in response_headers)
    locations = []
    for i, route in enumerate(all_routes):
        auth = f"/_authz_{i}"
        locations.append(_auth_location(auth, authz, auth_query(route.namespace, route.labels),
                                        style, tls))
        locations.append(f"""\
    location {route.prefix} {{
        auth_request {auth};
{copies}
        proxy_set_header Host $http_host;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://upstream;
    }}
""")
    tmp = prefix / "tmp"
    requests = f" keepalive_requests {keepalive_requests};" if keepalive_requests else ""
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp / "body"};
    proxy_temp_path {tmp / "proxy"};
    fastcgi_temp_path {tmp / "fastcgi"};
    uwsgi_temp_path {tmp / "uwsgi"};
    scgi_temp_path {tmp / "scgi"};
    # authz answers 200, 401 or 403: nginx keeps the 401's WWW-Authenticate.
    upstream authz {{ server {authz}; keepalive 8;{requests} }}
    upstream upstream {{ server 127.0.0.1:{upstream_port}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{listen_port};
{"".join(locations)}    }}
}}
"""


def write_prefix(prefix: Path, config: str) -> Path:
    """Lay out ``prefix`` (temp paths writable by nginx's workers) and write ``nginx.conf``."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        # Workers of a root master run as nobody: they must be able to write here.
        (prefix / "tmp" / sub).chmod(0o777)
    (prefix / "logs").mkdir(exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(config)
    return path


def nginx_argv(binary: str, prefix: Path) -> list[str]:
    """Run in the foreground with ``prefix`` as its world (``-e`` keeps the default
    error log path, unwritable when not root, out of the way)."""
    return [binary, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", "stderr"]
