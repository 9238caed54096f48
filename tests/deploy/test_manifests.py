"""manifests/: every kustomization renders, validates, and keeps its hardening.

Needs kubectl (kustomize built in); schema checks need kubernetes-validate and,
for Istio resources, jsonschema plus shared/conformance/istio-crds. Each skips
with the reason when its tool is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.tools.envoy_config import REQUESTS_PER_CONNECTION, STREAMS_PER_CONNECTION
from tests.deploy.helpers import (
    ADMIN_PORTS,
    AUTHZ_SELECTOR,
    GRPC_PORT,
    HEALTH_SERVICE,
    HTTP_CHECK_PORT,
    HTTP_PROXIES,
    KUSTOMIZATIONS,
    MANIFESTS,
    WITH_AUTHZ,
    containers,
    env,
    is_istio,
    is_traefik,
    of_kind,
    one,
    render,
    render_with_component,
    selects,
    tool,
    validate_istio,
)

# Oldest Kubernetes the manifests target (lifecycle.preStop.sleep is on by
# default from 1.30) and the newest schema kubernetes-validate bundles.
MIN_KUBERNETES = "1.30.0"


def kubernetes_versions() -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        return [MIN_KUBERNETES]
    return sorted({MIN_KUBERNETES, kubernetes_validate.latest_version()})


def k8s_validate(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate to check Kubernetes schemas")
    kubernetes_validate.validate(obj, version, strict=True)


def authz_deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment", "authz")


def authz_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = authz_deployment(objs)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "authz")


# --- rendering and schemas ------------------------------------------------------

@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders(name: str) -> None:
    objs = render(KUSTOMIZATIONS[name])
    assert objs
    for obj in objs:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name")


@pytest.mark.parametrize("version", kubernetes_versions())
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubernetes_objects_match_the_schema(name: str, version: str) -> None:
    checked = 0
    for obj in render(KUSTOMIZATIONS[name]):
        if is_istio(obj) or is_traefik(obj):
            continue
        k8s_validate(obj, version)
        checked += 1
    assert checked or name == "istio-sample"


def test_kubernetes_validation_is_strict() -> None:
    """The schema check itself catches a misspelled field (a negative control)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = authz_deployment(render(KUSTOMIZATIONS["base"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, MIN_KUBERNETES, strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_istio_objects_match_istio_crds(name: str) -> None:
    pytest.importorskip("jsonschema", reason="pip install jsonschema to check Istio schemas")
    for obj in render(KUSTOMIZATIONS[name]):
        if is_istio(obj):
            validate_istio(obj)


def test_istio_validation_is_strict() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    policy = one(render(KUSTOMIZATIONS["istio-sample"]), "AuthorizationPolicy", "httpbin-authz")
    validate_istio(policy)
    for broken in ({"action": "CUSTOMER"}, {"provider": {"nam": "authz"}}, {"rule": []}):
        with pytest.raises(jsonschema.ValidationError):
            validate_istio({**policy, "spec": {**policy["spec"], **broken}})


def test_yaml_is_lint_clean() -> None:
    yamllint = tool("yamllint")
    if yamllint is None:
        pytest.skip("yamllint not installed (pip install yamllint)")
    import subprocess

    out = subprocess.run([yamllint, "--strict", "-c", str(MANIFESTS / ".yamllint"),
                          str(MANIFESTS)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# --- hardening: every Deployment ----------------------------------------------

@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_every_pod_is_hardened(name: str) -> None:
    deployments = of_kind(render(KUSTOMIZATIONS[name]), "Deployment")
    assert deployments
    for deployment in deployments:
        where = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, where
        assert pod.get("hostNetwork", False) is False and pod.get("hostPID", False) is False
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["topologySpreadConstraints"], where
        keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, where
        for c in containers(deployment):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc.get("privileged", False) is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert not sc["capabilities"].get("add"), (where, c["name"])
            assert sc.get("runAsNonRoot", True) is True, (where, c["name"])
            assert sc.get("runAsUser", psc["runAsUser"]) > 0, (where, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (where, c["name"], kind)
            assert c["readinessProbe"] and c["livenessProbe"], (where, c["name"])
            for mount in c.get("volumeMounts", []):
                assert mount.get("readOnly") is True, (where, mount)


def test_authz_runs_as_the_image_user() -> None:
    """The pod's numeric user is the Dockerfile's USER."""
    dockerfile = (MANIFESTS.parent / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", dockerfile, re.MULTILINE)[-1]
    psc = authz_deployment(render(KUSTOMIZATIONS["base"]))["spec"]["template"]["spec"][
        "securityContext"]
    assert (str(psc["runAsUser"]), str(psc["runAsGroup"])) == (user[0], user[1] or user[0])


# --- authz: probes, ports, shutdown, policies -----------------------------------

@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_authz_probes_are_native_grpc_health(name: str) -> None:
    c = authz_container(render(KUSTOMIZATIONS[name]))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["grpc"] == {"port": GRPC_PORT, "service": HEALTH_SERVICE}, probe
    assert c["readinessProbe"]["periodSeconds"] <= 5


def expected_ports(name: str) -> list[tuple[str, int]]:
    """gRPC; and the HTTP authorization listener in the overlays for HTTP proxies."""
    return [("grpc", GRPC_PORT), *([("http-check", HTTP_CHECK_PORT)]
                                   if name in HTTP_PROXIES else [])]


@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_authz_exposes_grpc_only(name: str) -> None:
    objs = render(KUSTOMIZATIONS[name])
    c = authz_container(objs)
    assert sorted((p["name"], p["containerPort"]) for p in c["ports"]) == expected_ports(name)
    variables = env(c)
    if name in HTTP_PROXIES:
        assert variables["AUTHZ_HTTP_CHECK_ADDRESS"] == f"0.0.0.0:{HTTP_CHECK_PORT}"
    else:
        assert "AUTHZ_HTTP_CHECK_ADDRESS" not in variables
    assert variables["AUTHZ_GRPC_ADDRESS"].endswith(f":{GRPC_PORT}")
    # The admin HTTP server binds loopback: unreachable from outside the pod.
    assert variables["AUTHZ_HTTP_ADDRESS"].startswith("127.0.0.1:")
    # No Service links: a Service named authz would inject AUTHZ_* variables.
    assert authz_deployment(objs)["spec"]["template"]["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_services_expose_grpc_only_and_never_an_admin_port(name: str) -> None:
    services = of_kind(render(KUSTOMIZATIONS[name]), "Service")
    authz_services = [s for s in services if s["spec"].get("selector") == AUTHZ_SELECTOR]
    assert authz_services
    for svc in authz_services:
        ports = svc["spec"]["ports"]
        http = [(HTTP_CHECK_PORT, "http", "http-check")] if (
            name in HTTP_PROXIES and svc["metadata"]["name"] == "authz") else []
        assert [(p["port"], p["appProtocol"], p["targetPort"]) for p in ports] == [
            (GRPC_PORT, "grpc", "grpc"), *http], svc["metadata"]["name"]
    for svc in services:
        for p in svc["spec"]["ports"]:
            assert p["port"] not in ADMIN_PORTS and p.get("targetPort") not in ADMIN_PORTS
            assert p.get("targetPort") not in ("metrics", "admin")


@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_shutdown_fits_the_termination_grace_period(name: str) -> None:
    objs = render(KUSTOMIZATIONS[name])
    variables = env(authz_container(objs))
    drain, grace = float(variables["AUTHZ_DRAIN_DELAY"]), float(variables["AUTHZ_GRACE_PERIOD"])
    assert drain > 0, "without a drain delay Envoy keeps sending to a closed listener"
    pod = authz_deployment(objs)["spec"]["template"]["spec"]
    pre_stop = authz_container(objs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0, "Kubernetes sends SIGTERM while endpoints still list the pod"
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + grace


@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_drain_delay_matches_the_built_in_default(name: str) -> None:
    from authz.config import Settings

    variables = env(authz_container(render(KUSTOMIZATIONS[name])))
    assert float(variables["AUTHZ_DRAIN_DELAY"]) == Settings().drain_delay


def test_envoy_configuration_uses_no_deprecated_dns_refresh_rate() -> None:
    # Every Envoy configuration shipped for Kubernetes (deprecated in Envoy 1.40).
    envoy = {path: path.read_text() for path in sorted(MANIFESTS.rglob("*.yaml"))
             if "static_resources:" in path.read_text()}
    assert len(envoy) >= 2  # standalone-envoy and standalone-envoy-tls
    assert [path for path, text in envoy.items() if "dns_refresh_rate" in text] == []


@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_policies_configmap_is_mounted_where_authz_reads(name: str) -> None:
    objs = render(KUSTOMIZATIONS[name])
    c = authz_container(objs)
    pod = authz_deployment(objs)["spec"]["template"]["spec"]
    mount = one([{"kind": "m", "metadata": {"name": m["name"]}, **m} for m in c["volumeMounts"]],
                "m", "policies")
    assert env(c)["AUTHZ_POLICY"] == mount["mountPath"]
    volume = next(v for v in pod["volumes"] if v["name"] == "policies")
    # Mounted as a directory (no subPath): kubelet's atomic updates reach authz.
    assert "subPath" not in mount
    configmap = one(objs, "ConfigMap", volume["configMap"]["name"])
    assert configmap["metadata"]["name"].startswith("authz-policies")
    for text in configmap["data"].values():
        list(yaml.safe_load_all(text))  # every policy file parses


def test_policies_in_base_pass_authz_validate(tmp_path: Path) -> None:
    import subprocess
    import sys

    configmap = next(o for o in render(KUSTOMIZATIONS["base"])
                     if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("authz-"))
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    out = subprocess.run([sys.executable, "-m", "authz", "validate", str(tmp_path)],
                         capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_serviceaccount_token_is_not_mounted(name: str) -> None:
    sa = one(render(KUSTOMIZATIONS[name]), "ServiceAccount", "authz")
    assert sa["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_autoscaling_and_disruption_budget(name: str) -> None:
    objs = render(KUSTOMIZATIONS[name])
    hpa = one(objs, "HorizontalPodAutoscaler", "authz")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "authz"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    deployment = authz_deployment(objs)
    assert deployment["spec"]["replicas"] >= 2
    assert "cpu" in authz_container(objs)["resources"]["requests"]  # HPA needs it
    pdb = one(objs, "PodDisruptionBudget", "authz")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)


# --- NetworkPolicy ----------------------------------------------------------------

def ingress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}


@pytest.mark.parametrize("name", WITH_AUTHZ)
def test_networkpolicy_admits_only_proxies_to_grpc(name: str) -> None:
    objs = render(KUSTOMIZATIONS[name])
    policy = one(objs, "NetworkPolicy", "authz")
    labels = authz_deployment(objs)["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert ingress_ports(policy) == {port for _, port in expected_ports(name)}
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "a rule without `from` admits every pod"
        for peer in rule["from"]:
            selector = peer.get("podSelector")
            assert selector and (selector.get("matchLabels") or selector.get(
                "matchExpressions")), f"peer {peer} admits whole namespaces"


@pytest.mark.parametrize("name", list(HTTP_PROXIES))
def test_only_the_proxy_is_admitted_to_the_http_listener(name: str) -> None:
    policy = one(render(KUSTOMIZATIONS[name]), "NetworkPolicy", "authz")
    http_rules = [r for r in policy["spec"]["ingress"]
                  if {p["port"] for p in r["ports"]} & {HTTP_CHECK_PORT}]
    assert len(http_rules) == 1
    (rule,) = http_rules
    assert [p["port"] for p in rule["ports"]] == [HTTP_CHECK_PORT]
    assert [peer["podSelector"] for peer in rule["from"]] == [
        {"matchLabels": HTTP_PROXIES[name]}]


def test_ingress_nginx_sample_asks_the_rendered_service() -> None:
    (ingress,) = of_kind(render(KUSTOMIZATIONS["ingress-nginx-sample"]), "Ingress")
    notes = ingress["metadata"]["annotations"]
    url = notes["nginx.ingress.kubernetes.io/auth-url"]
    assert url == (f"http://{service_host()}:{HTTP_CHECK_PORT}/nginx"
                   f"?namespace={ingress['metadata']['namespace']}")
    listed = [h.strip() for h in notes["nginx.ingress.kubernetes.io/auth-response-headers"]
              .split(",")]
    assert "Authorization" in listed  # how authz's token removal reaches the upstream


def test_traefik_sample_middleware_is_used_and_asks_the_rendered_service() -> None:
    objs = render(KUSTOMIZATIONS["traefik-sample"])
    (middleware,) = [o for o in objs if o["kind"] == "Middleware"]
    assert middleware["apiVersion"] == "traefik.io/v1alpha1"
    forward = middleware["spec"]["forwardAuth"]
    namespace = middleware["metadata"]["namespace"]
    assert forward["address"] == (f"http://{service_host()}:{HTTP_CHECK_PORT}/traefik"
                                  f"?namespace={namespace}")
    assert "Authorization" in forward["authResponseHeaders"]
    assert set(forward) <= {"address", "authResponseHeaders", "trustForwardHeader"}
    (ingress,) = of_kind(objs, "Ingress")
    assert ingress["metadata"]["annotations"][
        "traefik.ingress.kubernetes.io/router.middlewares"] == (
        f"{namespace}-{middleware['metadata']['name']}@kubernetescrd")


def service_host() -> str:
    svc = one(render(KUSTOMIZATIONS["traefik"]), "Service", "authz")
    assert svc == one(render(KUSTOMIZATIONS["ingress-nginx"]), "Service", "authz")
    return f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"


def test_standalone_envoy_is_admitted_by_the_networkpolicy() -> None:
    objs = render(KUSTOMIZATIONS["standalone-envoy"])
    envoy_labels = one(objs, "Deployment", "envoy")["spec"]["template"]["metadata"]["labels"]
    policy = one(objs, "NetworkPolicy", "authz")
    peers = [p for rule in policy["spec"]["ingress"] for p in rule["from"]]
    assert any(selects(p["podSelector"].get("matchLabels", {}), envoy_labels)
               and p["podSelector"].get("matchLabels") for p in peers)


def test_istio_overlay_admits_sidecars() -> None:
    policy = one(render(KUSTOMIZATIONS["istio"]), "NetworkPolicy", "authz")
    peers = [p["podSelector"] for rule in policy["spec"]["ingress"] for p in rule["from"]]
    assert {"matchLabels": {"security.istio.io/tlsMode": "istio"}} in peers
    assert {"matchLabels": {"ext-authz-client": "true"}} in peers


def test_metrics_component_opens_admin_to_monitoring_only(tmp_path: Path) -> None:
    objs = render_with_component(tmp_path, KUSTOMIZATIONS["standalone-envoy"],
                                 MANIFESTS / "components" / "metrics")
    c = authz_container(objs)
    assert env(c)["AUTHZ_HTTP_ADDRESS"] == "0.0.0.0:9090"
    assert {p["containerPort"] for p in c["ports"]} == {GRPC_PORT, 9090}
    policy = one(objs, "NetworkPolicy", "authz")
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if 9090 in ports:
            assert ports == {9090}
            assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "monitoring"}}}]
    assert ingress_ports(policy) == {GRPC_PORT, 9090}
    for svc in of_kind(objs, "Service"):
        assert all(p["port"] != 9090 for p in svc["spec"]["ports"])
    for version in kubernetes_versions():
        for obj in objs:
            k8s_validate(obj, version)


# --- Istio overlay: provider registration and CUSTOM policy ------------------------

def mesh_config() -> dict[str, Any]:
    return yaml.safe_load((KUSTOMIZATIONS["istio"] / "mesh-config.yaml").read_text())


def duration_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    assert match, text
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


def test_mesh_config_points_at_the_rendered_service() -> None:
    operator = mesh_config()
    assert operator["apiVersion"] == "install.istio.io/v1alpha1"
    assert operator["kind"] == "IstioOperator"
    (provider,) = operator["spec"]["meshConfig"]["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert set(grpc) <= {"service", "port", "timeout", "failOpen", "statusOnError",
                         "clearRouteCache", "includeRequestBodyInCheck"}
    objs = render(KUSTOMIZATIONS["istio"])
    svc = one(objs, "Service", "authz")
    assert grpc["service"] == f"authz.{svc['metadata']['namespace']}.svc.cluster.local"
    assert grpc["port"] in [p["port"] for p in svc["spec"]["ports"]]
    assert grpc["failOpen"] is False
    assert duration_seconds(grpc["timeout"]) <= 5, "Istio's 600s default holds requests"
    assert 400 <= int(grpc["statusOnError"]) < 600
    namespace = one(objs, "Namespace", svc["metadata"]["namespace"])
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"


def test_custom_policy_names_the_registered_provider() -> None:
    (provider,) = mesh_config()["spec"]["meshConfig"]["extensionProviders"]
    (policy,) = of_kind(render(KUSTOMIZATIONS["istio-sample"]), "AuthorizationPolicy")
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]
    assert policy["spec"]["selector"]["matchLabels"], "the sample selects one workload"
    assert policy["spec"]["rules"], "a CUSTOM policy without rules never triggers"
    # Never the authz namespace: authz's own sidecar would call itself.
    assert policy["metadata"]["namespace"] != one(
        render(KUSTOMIZATIONS["istio"]), "Service", "authz")["metadata"]["namespace"]


# --- standalone Envoy ---------------------------------------------------------------

def envoy_bootstrap(objs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(objs, "Deployment", "envoy")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "config")
    configmap = one(objs, "ConfigMap", volume["configMap"]["name"])
    return yaml.safe_load(configmap["data"]["envoy.yaml"])


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(i for i in items if i["name"] == name)


def test_standalone_envoy_bootstrap_wiring() -> None:
    objs = render(KUSTOMIZATIONS["standalone-envoy"])
    boot = envoy_bootstrap(objs)
    assert boot["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    listeners = boot["static_resources"]["listeners"]
    ingress = by_name(listeners, "ingress")
    assert ingress["address"]["socket_address"]["port_value"] == 8080
    hcm = ingress["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in hcm["http_filters"]]
    assert filters == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
    ext_authz = hcm["http_filters"][0]["typed_config"]
    assert ext_authz["transport_api_version"] == "V3"
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "authz"
    assert duration_seconds(ext_authz["grpc_service"]["timeout"]) <= 5
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        per_route = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
        assert per_route["@type"].endswith("ext_authz.v3.ExtAuthzPerRoute")
        assert per_route["check_settings"]["context_extensions"]["namespace"]
    # The authz cluster: HTTP/2, every pod of the headless Service, gRPC health.
    authz = by_name(boot["static_resources"]["clusters"], "authz")
    options = authz["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    # Several connections per pod, replaced now and then: the kernel spreads
    # connections, not Checks, over authz's --workers processes.
    assert options["explicit_http_config"]["http2_protocol_options"][
        "max_concurrent_streams"] == STREAMS_PER_CONNECTION
    assert options["common_http_protocol_options"][
        "max_requests_per_connection"] == REQUESTS_PER_CONNECTION
    (check,) = authz["health_checks"]
    assert check["grpc_health_check"]["service_name"] == HEALTH_SERVICE
    assert "no_traffic_interval" in check
    address = authz["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"]["socket_address"]
    svc = one(objs, "Service", address["address"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == AUTHZ_SELECTOR
    assert address["port_value"] == svc["spec"]["ports"][0]["port"] == GRPC_PORT
    # Drain: a NOT_SERVING pod leaves rotation before authz stops answering.
    interval = duration_seconds(check["interval"]) * check["unhealthy_threshold"]
    drain = float(env(authz_container(objs))["AUTHZ_DRAIN_DELAY"])
    assert interval + duration_seconds(check["timeout"]) < drain


def test_standalone_envoy_ports_match_the_bootstrap() -> None:
    objs = render(KUSTOMIZATIONS["standalone-envoy"])
    boot = envoy_bootstrap(objs)
    public = {lst["address"]["socket_address"]["port_value"]
              for lst in boot["static_resources"]["listeners"]
              if lst["address"]["socket_address"]["address"] == "0.0.0.0"}
    deployment = one(objs, "Deployment", "envoy")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["containerPort"] for p in container["ports"]} == public
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert names[container[probe]["httpGet"]["port"]] in public
    svc = one(objs, "Service", "envoy")
    assert [names[p["targetPort"]] for p in svc["spec"]["ports"]] == [8080]
    assert container["image"].startswith("envoyproxy/envoy:v1.")
