"""Alert rules and the dashboard only name metrics the server really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from authz.server import AuthzServer
from tests.server.conftest import JwksPolicy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
METRIC = re.compile(r"\bauthz_[a-z_]+\b")


def referenced() -> set[str]:
    rules = yaml.safe_load((DOCS / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
    dashboard = json.loads((DOCS / "dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return {m for e in exprs for m in METRIC.findall(e)}


async def test_every_referenced_metric_is_exported(
    start_server: Callable[..., Awaitable[AuthzServer]], jwks_policy: JwksPolicy
) -> None:
    server = await start_server(jwks_policy.policy)
    server.metrics.checks.labels("deny", "403", "rbac_denied", "grpc").inc(0)
    server.metrics.reloads.labels("failure").inc(0)
    server.metrics.check_latency.labels("grpc").observe(0.001)
    assert server._admin is not None
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{server._admin.port}/metrics"
    ) as r:
        text = await r.text()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    missing = sorted(referenced() - exported)
    assert not missing, f"alerts/dashboard reference metrics authz does not export: {missing}"
