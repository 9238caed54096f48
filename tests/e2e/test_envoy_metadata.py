"""``experimental.envoy.filters.*`` conditions through real Envoy: a filter before
ext_authz writes dynamic metadata, ext_authz sends it (``metadata_context_namespaces``)
and the condition reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import StartAuthz, StartEnvoy
from tests.e2e.rig import EchoUpstream, Route

pytestmark = pytest.mark.e2e

NAMESPACE = "envoy.filters.http.header_to_metadata"
HEADER_TO_METADATA = {
    "name": "envoy.filters.http.header_to_metadata",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
        "request_rules": [{"header": "x-tier", "on_header_present": {
            "metadata_namespace": NAMESPACE, "key": "tier", "type": "STRING"}}],
    },
}
POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tiers, namespace: shop}
spec:
  rules:
  - when:
    - key: experimental.envoy.filters.http.header_to_metadata[tier]
      values: ["gold", "plat*"]
"""


async def test_condition_reads_metadata_another_filter_wrote(
    start_authz: StartAuthz, start_envoy: StartEnvoy, echo_upstream: EchoUpstream,
    tmp_path: Path,
) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    authz = await start_authz(tmp_path / "p.yaml")
    routes = [Route("/shop/", {"namespace": "shop"})]
    envoy = await start_envoy(authz.port, echo_upstream.port, routes,
                              before_authz=[HEADER_TO_METADATA], metadata_namespaces=[NAMESPACE])
    assert (await envoy.send("GET", "/shop/a", {"x-tier": "gold"})).status == 200
    assert (await envoy.send("GET", "/shop/a", {"x-tier": "platinum"})).status == 200
    assert (await envoy.send("GET", "/shop/a", {"x-tier": "free"})).status == 403
    assert (await envoy.send("GET", "/shop/a")).status == 403
    # Without metadata_context_namespaces (Istio's CUSTOM filter) the value is absent.
    plain = await start_envoy(authz.port, echo_upstream.port, routes,
                              before_authz=[HEADER_TO_METADATA])
    assert (await plain.send("GET", "/shop/a", {"x-tier": "gold"})).status == 403
