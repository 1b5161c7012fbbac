"""Kubernetes manifests: rendered with kustomize, validated offline, and checked against policy
and against what the code really uses (ports, settings, metric names)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.search import metrics
from services.search.config import Settings, documented_settings
from services.search.server import LIVENESS_SERVICE
from services.search.triton_client import DETECT_ENSEMBLE
from tests.conftest import ROOT
from tools.models import repository

DEPLOY = ROOT / "deploy"
OVERLAYS = ("gpu", "cpu")
KUBERNETES_VERSION = "1.32.0"
TRITON_RELEASE = "24.10"  # Triton 2.51.0, the server the tests run (nvidia-pytriton 0.7.0)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Milvus", "Certificate"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render deploy/overlays"
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)], check=True,
                         capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request):
    return render(request.param)


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def containers(objects):
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


def test_every_object_is_valid_against_the_kubernetes_schemas(objects):
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] in ("monitoring.coreos.com/v1", "milvus.io/v1beta1", "cert-manager.io/v1"), \
                obj["kind"]
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 15


def test_every_container_has_requests_limits_and_probes(objects):
    for workload, c in containers(objects):
        where = f"{workload['metadata']['name']}/{c['name']}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), where
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert probe in c, f"{where} lacks {probe}"


def test_no_container_runs_as_root_or_escalates(objects):
    for workload, c in containers(objects):
        pod = workload["spec"]["template"]["spec"]
        where = f"{workload['metadata']['name']}/{c['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, where
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert pod["automountServiceAccountToken"] is False, where


def test_image_tags_are_pinned(objects):
    for _, c in containers(objects):
        image = c["image"]
        assert "@sha256:" in image or re.search(r":[\w][\w.-]*$", image.split("/")[-1]), image
        assert not image.endswith(":latest"), image
    milvus = by_kind(objects, "Milvus")[0]
    assert not milvus["spec"]["components"]["image"].endswith(":latest")


def test_every_deployment_has_a_pdb_an_hpa_and_spreads_over_nodes_and_zones(objects):
    pdbs = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            for p in by_kind(objects, "PodDisruptionBudget")}
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(objects, "HorizontalPodAutoscaler")}
    for deployment in by_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] in pdbs, name
        assert name in hpas, name
        assert hpas[name]["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300, name
        keys = {t["topologyKey"] for t in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name


def test_gpu_overlay_puts_triton_on_gpu_nodes_with_the_canonical_repository():
    objects = render("gpu")
    triton = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "triton")
    pod = triton["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]) and pod["nodeSelector"]
    assert "--model-repository=/models" in c["args"]
    assert not any(a.startswith("--model-config-name") for a in c["args"])  # the canonical config.pbtxt
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/dev/shm", "/trt-cache", "/models"} <= mounts
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 900
    for name in repository.ONNX_MODELS:  # the engine caches the GPU configs name lie on that volume
        (trt,) = repository.configs("gpu")[name].optimization.execution_accelerators.gpu_execution_accelerator
        assert str(Path(trt.parameters["trt_engine_cache_path"]).parent) in mounts
    cpu = next(d for d in by_kind(render("cpu"), "Deployment") if d["metadata"]["name"] == "triton")
    cpu_args = cpu["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model-repository=/models" in cpu_args and f"--model-config-name={repository.CPU_CONFIG}" in cpu_args
    assert "nvidia.com/gpu" not in cpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_triton_image_matches_the_tested_server_release():
    dockerfile = (DEPLOY / "docker" / "triton.Dockerfile").read_text()
    assert f"FROM nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3" in dockerfile
    assert "numpy==1." in dockerfile


def test_manifest_settings_ports_and_metrics_match_the_code(objects):
    known = {env for env, _, _ in documented_settings()}
    config = by_kind(objects, "ConfigMap")
    search_config = next(c for c in config if c["metadata"]["name"] == "search-config")["data"]
    assert set(search_config) <= known, set(search_config) - known
    settings = Settings.from_env(search_config, check_files=False)  # the shipped configuration is valid
    grpc_port = int(settings.listen.rpartition(":")[2])
    health_port = int(settings.health_listen.rpartition(":")[2])

    search = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "search")
    c = search["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": grpc_port, "health": health_port, "metrics": settings.metrics_port}
    # the API port speaks TLS; kubelet's gRPC probes cannot, so they use the plaintext health port
    assert settings.tls and settings.tls_client_ca and settings.auth_policy
    assert c["readinessProbe"]["grpc"] == {"port": health_port}
    assert c["livenessProbe"]["grpc"] == {"port": health_port, "service": LIVENESS_SERVICE}
    grace = search["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown_grace_s + c["lifecycle"]["preStop"]["sleep"]["seconds"]

    triton_port = int(settings.triton_url.rpartition(":")[2])
    triton = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "triton")
    triton_ports = {p["name"]: p["containerPort"] for p in triton["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert triton_ports["grpc"] == triton_port
    assert f"--grpc-port={triton_port}" in triton["spec"]["template"]["spec"]["containers"][0]["args"]

    hpa_metrics = {m["pods"]["metric"]["name"] for h in by_kind(objects, "HorizontalPodAutoscaler")
                   for m in h["spec"]["metrics"] if m["type"] == "Pods"}
    adapter = yaml.safe_load(next(c for c in config if c["metadata"]["name"] == "prometheus-adapter-visualsearch")
                             ["data"]["config.yaml"])
    exposed = {r["name"]["as"] for r in adapter["rules"]}
    assert hpa_metrics <= exposed
    series = {r["seriesQuery"].split("{")[0] for r in adapter["rules"]}
    rules = by_kind(objects, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
    recorded = {r["record"] for r in rules}
    for name in series:
        assert name in recorded or name in metrics.METRIC_NAMES, name
    exprs = " ".join(r["expr"] for r in rules)
    assert f'model="{DETECT_ENSEMBLE}"' in exprs
    for used in re.findall(r"\b(vs_[a-z_]+)", exprs + " ".join(series)):
        assert used in metrics.METRIC_NAMES, used


def test_certificates_and_credentials_come_from_secrets_a_reapply_never_overwrites(objects):
    search = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "search")
    pod = search["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    config = next(c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == "search-config")["data"]
    certificates = {c["spec"]["secretName"]: c for c in by_kind(objects, "Certificate")}
    # the TLS files are cert-manager's Secret, mounted where the settings point
    tls_volume = next(name for name, secret in secrets.items() if secret in certificates)
    for env, key in (("VS_TLS_CERT", "tls.crt"), ("VS_TLS_KEY", "tls.key"), ("VS_TLS_CLIENT_CA", "ca.crt")):
        assert config[env] == f"{mounts[tls_volume]}/{key}", env
    server = certificates[secrets[tls_volume]]["spec"]
    assert "server auth" in server["usages"] and "search.visualsearch.svc" in server["dnsNames"]
    assert server["privateKey"]["rotationPolicy"] == "Always"
    assert any("client auth" in c["spec"]["usages"] for c in certificates.values())
    # the policy and the Milvus token are Secrets this apply references but never renders
    rendered = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    policy_volume = next(name for name, secret in secrets.items() if secret == "search-auth-policy")
    assert config["VS_AUTH_POLICY"].startswith(mounts[policy_volume] + "/")
    env_secrets = {ref["secretRef"]["name"] for ref in pod["containers"][0]["envFrom"] if "secretRef" in ref}
    assert not ({"search-auth-policy", *env_secrets} & rendered)
    readme = (DEPLOY / "README.md").read_text()
    for name in ("search-auth-policy", *env_secrets):
        assert f"kubectl -n visualsearch create secret generic {name}" in readme, name


def test_triton_offers_callers_no_model_load_or_unload(objects):
    triton = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "triton")
    args = triton["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model-control-mode=none" in args and not any(a.startswith("--load-model") for a in args)


def test_network_policies_admit_only_the_search_service_to_triton_and_milvus(objects):
    policies = {p["metadata"]["name"]: p for p in by_kind(objects, "NetworkPolicy")}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    for name, port in (("triton", 8001), ("milvus", 19530)):
        rules = [r for r in policies[name]["spec"]["ingress"] if any(p.get("port") == port for p in r.get("ports", []))]
        sources = [f for r in rules for f in r["from"]]
        assert sources == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "search"}}}], name
    callers = policies["search"]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
    assert callers == {"visualsearch.io/search-client": "true"}


@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path):
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_search_image_runs_as_non_root_and_installs_pinned_requirements():
    dockerfile = (DEPLOY / "docker" / "search.Dockerfile").read_text()
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert re.search(r"^FROM python:3\.11\.\d+-slim", dockerfile, re.M)
    for line in (ROOT / "requirements" / "search-image.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert "==" in line, line
