"""docs/http-proxies.md: its nginx snippet is valid nginx, its Kubernetes objects are the
ones manifests/ ships, and its Traefik middleware is the one the e2e tests run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.testing.nginx import NginxRoute, nginx_binary
from authz.testing.traefik import forward_auth
from tests.deploy.helpers import MANIFESTS
from tests.shared_data import in_ci

DOC = MANIFESTS.parent / "docs" / "http-proxies.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(DOC.read_text()) if kind == lang]


def documents() -> list[dict[str, Any]]:
    return [yaml.safe_load(body) for body in blocks("yaml")]


def test_nginx_snippet_passes_nginx_t(tmp_path: Path) -> None:
    binary = nginx_binary()
    if binary is None:
        if in_ci():
            pytest.fail("nginx not found (CI=true: .ci/run installs it)", pytrace=False)
        pytest.skip("nginx not found: apt-get install nginx to check the documented snippet")
    (snippet,) = blocks("nginx")
    server, marker, http = snippet.partition("# in http {}")
    http = marker + http
    assert "upstream authz_http" in http and "auth_request /_authz;" in server
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
    {http.replace("authz.example.internal", "127.0.0.1")}
    server {{
        listen 127.0.0.1:1;
        {server}
    }}
}}
""")
    out = subprocess.run([binary, "-t", "-p", f"{tmp_path}/", "-c", str(tmp_path / "conf.conf"),
                          "-e", "stderr"], capture_output=True, text=True, timeout=30,
                         check=False)
    assert out.returncode == 0, out.stderr


def test_kubernetes_objects_are_the_shipped_samples() -> None:
    docs = documents()
    for sample in ("ingress-nginx/sample/ingress.yaml", "traefik/sample/middleware.yaml"):
        shipped = yaml.safe_load((MANIFESTS / "overlays" / sample).read_text())
        assert shipped in docs, f"docs/http-proxies.md does not show overlays/{sample}"


def test_traefik_middleware_is_the_one_the_e2e_tests_run() -> None:
    dynamic = next(d for d in documents() if "http" in d)
    (middleware,) = dynamic["http"]["middlewares"].values()
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
