"""Kubernetes manifests: rendered with kustomize, validated offline, and checked against policy
and against what the code really uses (ports, settings, metric names)."""

from __future__ import annotations

import json
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
from tests.dockerfiles import copied_sources
from tests.integration.manifests import DEPLOY, by_kind, named, render
from tools.models import repository

OVERLAYS = ("gpu", "cpu")
KUBERNETES_VERSION = "1.32.0"
OLDEST_KUBERNETES = "1.30.0"  # deploy/README.md's "Kubernetes 1.30+" (preStop sleep is 1.30's)
TRITON_RELEASE = "24.10"  # Triton 2.51.0, the server the tests run (nvidia-pytriton 0.7.0)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Milvus", "Certificate"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request):
    return render(request.param)


def containers(objects, init: bool = False):
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        spec = workload["spec"]["template"]["spec"]
        for container in spec["containers"] + (spec.get("initContainers", []) if init else []):
            yield workload, container


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, KUBERNETES_VERSION])
def test_every_object_is_valid_against_the_kubernetes_schemas(objects, version):
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] in ("monitoring.coreos.com/v1", "milvus.io/v1beta1", "cert-manager.io/v1"), \
                obj["kind"]
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 15


def test_milvus_policies_let_the_operator_check_its_dependencies():
    """Item 2: the operator dials etcd, MinIO and Pulsar itself before creating Milvus."""
    policies = render(DEPLOY / "milvus" / "policies")
    assert {p["metadata"]["namespace"] for p in policies} == {"milvus"}
    for flavour in OVERLAYS:
        overlay = yaml.safe_load((DEPLOY / "overlays" / flavour / "kustomization.yaml").read_text())
        assert "../../milvus/policies" in overlay["resources"], flavour
    milvus = named(policies, "NetworkPolicy", "milvus")
    from_operator = [rule for rule in milvus["spec"]["ingress"]
                     if any(f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                            == "milvus-operator" for f in rule.get("from", []))]
    ports = {p["port"] for rule in from_operator for p in rule["ports"]}
    assert {2379, 9000, 6650, 9091} <= ports  # etcd, MinIO, Pulsar, Milvus' health


def test_the_prerequisites_name_what_the_hpas_and_monitors_read(objects):
    """An HPA whose CPU metric cannot be read never scales down: metrics-server is a prerequisite
    where an HPA scales on a Resource metric; the monitoring objects need their namespace."""
    readme = (DEPLOY / "README.md").read_text().split("## Prerequisites")[1].split("\n## ")[0]
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    if any(m["type"] == "Resource" for h in hpas for m in h["spec"]["metrics"]):
        assert "metrics-server" in readme
    assert "`monitoring` namespace" in readme and "prometheus-adapter" in readme


def test_the_readme_states_the_oldest_kubernetes_the_schemas_are_checked_at():
    oldest = ".".join(OLDEST_KUBERNETES.split(".")[:2])
    assert f"Kubernetes {oldest}+" in (DEPLOY / "README.md").read_text()


def test_every_container_has_requests_limits_and_probes(objects):
    for workload, c in containers(objects):
        where = f"{workload['metadata']['name']}/{c['name']}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), where
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert probe in c, f"{where} lacks {probe}"
            # the 1 s default fails the probes of a busy pod (a loaded Triton, a search pod at its limit)
            assert c[probe].get("timeoutSeconds", 1) >= 3, f"{where} {probe}: timeoutSeconds"


def test_dns_egress_reaches_any_resolver_including_nodelocal_dns(objects):
    for policy in by_kind(objects, "NetworkPolicy"):
        dns = [rule for rule in policy["spec"].get("egress", []) if any(p.get("port") == 53 for p in rule["ports"])]
        for rule in dns:  # NodeLocal DNSCache answers on a link-local address no pod selector matches
            assert "to" not in rule, f"{policy['metadata']['name']}: DNS egress limited to {rule['to']}"


def test_no_container_runs_as_root_or_escalates(objects):
    for workload, c in containers(objects, init=True):
        pod = workload["spec"]["template"]["spec"]
        where = f"{workload['metadata']['name']}/{c['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, where
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert pod["automountServiceAccountToken"] is False, where


def test_image_tags_are_pinned(objects):
    for _, c in containers(objects, init=True):
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
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    # D8: the GPU resource places the pod; no node label that only the GPU Operator sets
    assert "nodeSelector" not in pod
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


def test_a_gpu_rollout_waits_for_engine_builds_and_needs_no_spare_gpu():
    triton = next(d for d in by_kind(render("gpu"), "Deployment") if d["metadata"]["name"] == "triton")
    startup = triton["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    longest_start = startup["periodSeconds"] * startup["failureThreshold"]
    assert triton["spec"]["progressDeadlineSeconds"] > longest_start
    assert triton["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_triton_image_matches_the_tested_server_release():
    dockerfile = (DEPLOY / "docker" / "triton.Dockerfile").read_text()
    assert f"FROM nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3" in dockerfile
    assert "numpy==1." in (ROOT / "requirements" / "triton-image.txt").read_text()  # numpy 2 empties outputs


def test_manifest_settings_ports_and_metrics_match_the_code(objects):
    known = {env for env, _, _ in documented_settings()}
    config = by_kind(objects, "ConfigMap")
    search_config = next(c for c in config if c["metadata"]["name"] == "search-config")["data"]
    assert set(search_config) <= known, set(search_config) - known
    settings = Settings.from_env(search_config, check_files=False)  # the shipped configuration is valid
    grpc_port = int(settings.listen.rpartition(":")[2])
    health_port = int(settings.health_listen.rpartition(":")[2])
    token_port = int(settings.token_listen.rpartition(":")[2])  # token callers: TLS without client certificates

    search = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "search")
    c = search["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": grpc_port, "grpc-token": token_port, "health": health_port,
                     "metrics": settings.metrics_port}
    service = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "search")
    assert {p["targetPort"] for p in service["spec"]["ports"]} >= {"grpc", "grpc-token"}
    policy = next(p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == "search")
    callers = policy["spec"]["ingress"][0]["ports"]
    assert {p["port"] for p in callers} == {grpc_port, token_port}
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
    adapter = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-adapter-values.yaml").read_text())["rules"]
    exposed = {r["name"]["as"] for r in adapter["custom"]}
    assert hpa_metrics <= exposed and adapter["default"] is False
    series = {r["seriesQuery"].strip("'").split("{")[0] for r in adapter["custom"]}
    groups = by_kind(objects, "PrometheusRule")[0]["spec"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    for name in series:
        assert name in recorded or name in metrics.METRIC_NAMES, name
    exprs = " ".join(r["expr"] for r in rules)
    for used in re.findall(r"\b(vs_[a-z_]+)", exprs + " ".join(series)):
        assert re.sub(r"_(bucket|count|sum)$", "", used) in metrics.METRIC_NAMES, used
    # D10: every aggregating adapter query keeps the pods apart
    for rule in adapter["custom"]:
        assert "by (<<.GroupBy>>)" in rule["metricsQuery"], rule["name"]["as"]
    # D1/D17: the Triton signal is the composing models' queue time, never the ensemble's
    # (its scheduler does not queue), and no rate is clamped
    queue = next(r["expr"] for r in rules if r.get("record") == "triton:queue_duration_us_per_request:rate1m")
    selector = re.search(r'nv_inference_queue_duration_us\{model=~"([^"]+)"\}', queue).group(1).split("|")
    assert DETECT_ENSEMBLE not in selector and {"detector", "embedder"} <= set(selector)
    assert "clamp_min" not in exprs


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


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admits(policy: dict, pod: dict, port: int) -> bool:
    """Whether an ingress NetworkPolicy lets ``pod`` (labels, namespace, namespace labels) reach
    ``port`` of the pods it selects (matchLabels only: all that deploy/ uses)."""
    for rule in policy["spec"].get("ingress", []):
        if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
            continue
        for peer in rule.get("from", []):
            if "namespaceSelector" in peer:
                namespace_ok = matches(peer["namespaceSelector"], pod["namespace_labels"])
            else:
                namespace_ok = pod["namespace"] == policy["metadata"]["namespace"]
            if namespace_ok and matches(peer.get("podSelector", {}), pod["labels"]):
                return True
    return False


def pods(objects: list[dict]) -> dict[str, dict]:
    """Every workload's pod template: its labels and namespace (and that namespace's labels)."""
    found = {}
    for o in objects:
        if o["kind"] in (*WORKLOADS, "Job"):
            namespace = o["metadata"]["namespace"]
            found[o["metadata"]["name"]] = {"labels": o["spec"]["template"]["metadata"]["labels"],
                                            "namespace": namespace,
                                            "namespace_labels": {"kubernetes.io/metadata.name": namespace}}
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_model_rollout_never_mixes_tiers_and_its_jobs_reach_what_they_need(overlay):
    """Item 9: triton-next (deploy/rollout) beside the live Triton: nothing of one tier selects
    the other's pods; both are Triton to the NetworkPolicies; the catalog_upgrade Job reaches
    Triton and Milvus, the importer Job the search service, and nothing else gets in."""
    live, nxt = render(overlay), render(DEPLOY / "rollout" / overlay)
    jobs = render(DEPLOY / "jobs")
    everything = live + nxt + jobs
    for obj in nxt + jobs:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, OLDEST_KUBERNETES, strict=True)
    workloads = pods(everything)
    tiers = {"triton": workloads["triton"]["labels"], "triton-next": workloads["triton-next"]["labels"]}
    for name, own in tiers.items():
        other = tiers["triton-next" if name == "triton" else "triton"]
        for kind in ("Service", "PodDisruptionBudget", "ServiceMonitor"):
            selector = named(everything, kind, name)["spec"]["selector"]
            selector = selector if "matchLabels" in selector else {"matchLabels": selector}
            assert matches(selector, own) and not matches(selector, other), (kind, name)
        deployment = named(everything, "Deployment", name)
        assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == name
        for spread in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
            assert matches(spread["labelSelector"], own) and not matches(spread["labelSelector"], other)
        assert named(everything, "HorizontalPodAutoscaler", name)["spec"]["scaleTargetRef"]["name"] == name
    # the same pods but the models: triton-next differs from the live tier only in its models image
    specs = {name: named(everything, "Deployment", name)["spec"]["template"]["spec"] for name in tiers}
    images = {name: [c["image"] for c in spec["initContainers"] + spec["containers"]] for name, spec in specs.items()}
    assert images["triton"][1:] == images["triton-next"][1:] and images["triton"][0] != images["triton-next"][0]
    assert named(live, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]["args"] == \
        named(nxt, "Deployment", "triton-next")["spec"]["template"]["spec"]["containers"][0]["args"]
    search_image = named(live, "Deployment", "search")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert {j["spec"]["template"]["spec"]["containers"][0]["image"] for j in by_kind(jobs, "Job")} == {search_image}

    policies = {p["metadata"]["name"]: p for p in by_kind(everything, "NetworkPolicy")}
    triton_policy = policies["triton"]
    assert all(matches(triton_policy["spec"]["podSelector"], labels) for labels in tiers.values())
    reach = {"triton": (triton_policy, 8001), "milvus": (policies["milvus"], 19530),
             "search": (policies["search"], 50051)}
    wanted = {"triton": {"search", "catalog-upgrade"}, "milvus": {"search", "catalog-upgrade"},
              "search": {"catalog-import"}}
    for target, (policy, port) in reach.items():
        admitted = {name for name, pod in workloads.items() if admits(policy, pod, port)}
        assert admitted == wanted[target], target
    # the search pods (rolled to triton-next) may call both tiers
    egress = policies["search"]["spec"]["egress"]
    assert any(matches(peer.get("podSelector", {}), tiers["triton-next"]) for rule in egress
               for peer in rule.get("to", []) if {"port": 8001, "protocol": "TCP"} in rule.get("ports", []))


def test_network_policies_admit_callers_by_label_only(objects):
    policies = {p["metadata"]["name"]: p for p in by_kind(objects, "NetworkPolicy")}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    callers = policies["search"]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
    assert callers == {"visualsearch.io/search-client": "true"}
    # a caller from another namespace, labelled as the in-namespace clients are, gets no further
    outsider = {"labels": {"visualsearch.io/triton-client": "true", "visualsearch.io/milvus-client": "true"},
                "namespace": "shop", "namespace_labels": {"kubernetes.io/metadata.name": "shop"}}
    assert not admits(policies["triton"], outsider, 8001) and not admits(policies["milvus"], outsider, 19530)


@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path):
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Each image's base and the Python it ships (tritonserver 24.10: Ubuntu 22.04, Python 3.10).
IMAGE_PYTHON = {"nvcr.io/nvidia/tritonserver:24.10-py3": "3.10", "python:3.11.7-slim-bookworm": "3.11",
                "busybox:1.37.0": None}  # the models image: files only, no Python


@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_not_excluded_by_dockerignore(dockerfile: Path):
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for src in copied_sources(dockerfile.read_text()):
        assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
        top = src.split("/")[0]
        assert top not in ignored and src not in ignored, f"{dockerfile.name}: COPY {src} is in .dockerignore"


@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_every_image_requirements_file_resolves_for_the_image_python(dockerfile: Path, tmp_path):
    """pip resolves the image's pinned requirements for the base image's Python and platform,
    binary wheels only (what the build would install), without installing anything here."""
    text = dockerfile.read_text()
    base = re.findall(r"^FROM (\S+)", text, re.M)[0]
    assert base in IMAGE_PYTHON, f"{dockerfile.name}: base {base} has no known Python; add it to IMAGE_PYTHON"
    files = [src for src in copied_sources(text) if src.startswith("requirements/")]
    if not files or IMAGE_PYTHON[base] is None:
        assert "pip install" not in text, f"{dockerfile.name} installs packages without a requirements file"
        return
    for requirements in files:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-cache-dir",
             "--only-binary=:all:", "--python-version", IMAGE_PYTHON[base], "--implementation", "cp",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
             "--platform", "manylinux2014_x86_64", "--target", str(tmp_path / "target"),
             "-r", str(ROOT / requirements)],
            capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{requirements} does not resolve for Python {IMAGE_PYTHON[base]}:\n" \
                                     f"{done.stderr[-3000:]}"


def test_the_models_image_says_it_carries_agpl_weights_and_refuses_a_non_redistributable_model():
    from tools.models.build import BUILTIN

    dockerfile = (DEPLOY / "docker" / "models.Dockerfile").read_text()
    assert "AGPL-3.0" in re.search(r'org\.opencontainers\.image\.licenses="([^"]+)"', dockerfile).group(1)
    assert "AGPL" in BUILTIN["yolov8s-world"].license
    guard = re.search(r"grep -qil (\w+) /models/\*/manifest\.json", dockerfile).group(1)
    assert guard in BUILTIN["sscd"].license.lower()  # the guard catches the one such built-in
    assert not any(guard in source.license.lower() for name, source in BUILTIN.items() if name != "sscd")
    installed = (ROOT / "model_repository" / "embedder" / "manifest.json").read_text().lower()
    assert guard not in installed  # what make models installs by default builds


def test_the_ghz_job_runs_the_ghz_release_the_load_tests_use():
    """ghz's release workflow tags its image with the bare version (0.121.0, no "v")."""
    job = (DEPLOY / "loadtest" / "job" / "job.yaml").read_text()
    tag = re.search(r"image: ghcr\.io/bojand/ghz:(\S+)", job).group(1)
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"ghz image tag {tag!r}: the release images carry no 'v'"
    from tools.loadtest import ghz

    binary = ghz.find()
    if binary is not None:  # the real ghz beside the checkout: the Job runs the same release
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
        version = (done.stdout + done.stderr).strip()  # ghz prints its version on stderr
        assert version.lstrip("v") == tag, (version, tag)


def test_search_image_runs_as_non_root_and_installs_pinned_requirements():
    dockerfile = (DEPLOY / "docker" / "search.Dockerfile").read_text()
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert re.search(r"^FROM python:3\.11\.\d+-slim", dockerfile, re.M)
    for line in (ROOT / "requirements" / "search-image.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert "==" in line, line


# -- the first apply works: each test names the review finding (D1-D21) it guards -------

def test_milvus_runs_in_its_own_namespace_that_its_pods_can_start_in(objects):  # D2
    milvus = by_kind(objects, "Milvus")[0]
    assert milvus["metadata"]["namespace"] == "milvus"
    namespaces = {n["metadata"]["name"]: n for n in yaml.safe_load_all((DEPLOY / "namespaces.yaml").read_text())}
    assert namespaces["visualsearch"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespaces["milvus"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    policies = [p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["namespace"] == "milvus"]
    # its etcd / MinIO / Pulsar pods carry other labels: every pod of the namespace may talk to every other
    assert any({"podSelector": {}} in r["from"] for p in policies for r in p["spec"].get("ingress", [])
               if p["spec"]["podSelector"] == {})
    sources = [f for p in policies for r in p["spec"].get("ingress", []) for f in r["from"]]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "milvus-operator"}}} in sources
    config = named(objects, "ConfigMap", "search-config")["data"]
    assert config["VS_MILVUS_URI"].startswith("http://milvus-milvus.milvus.svc")


def operator_defaults(milvus: dict) -> dict:
    """The Milvus operator v1.3.8's defaulting of a Milvus CR's in-cluster MinIO, which it applies
    on every reconcile (apis/milvus.io/v1beta1/milvus_webhook.go, ``defaultStorage``): the
    endpoint and the Secret it reads the keys from are "<name>-minio", whatever the CR says."""
    spec = json.loads(json.dumps(milvus["spec"]))
    storage = spec["dependencies"].setdefault("storage", {})
    if not storage.get("external"):
        name, namespace = milvus["metadata"]["name"], milvus["metadata"]["namespace"]
        storage["endpoint"] = f"{name}-minio.{namespace}:9000"
        storage.setdefault("inCluster", {}).setdefault("values", {})
        storage["secretRef"] = f"{name}-minio"
    return spec


def test_milvus_starts_with_the_minio_secret_operators_create_and_never_a_default_credential(objects):
    """Items 2, 3 and 5: the one install path (the operator). After the operator's defaulting, the
    Secret it reads, the one MinIO uses and the one deploy/README creates are the same; the keys
    are the names both read; authentication is on and no default credential is rendered."""
    milvus = by_kind(objects, "Milvus")[0]
    spec = operator_defaults(milvus)
    storage = spec["dependencies"]["storage"]
    readme = (DEPLOY / "README.md").read_text()
    created = re.search(r"kubectl -n milvus create secret generic (\S+) \\\n\s+--from-literal=accesskey=.+? "
                        r"--from-literal=secretkey=", readme)
    assert created, "deploy/README no longer creates the MinIO Secret with keys accesskey / secretkey"
    assert storage["secretRef"] == storage["inCluster"]["values"]["existingSecret"] == created.group(1)
    assert milvus["spec"]["dependencies"]["storage"]["secretRef"] == storage["secretRef"]  # the file says it too
    assert spec["config"]["common"]["security"]["authorizationEnabled"] is True
    assert spec["dependencies"]["pulsar"]["inCluster"]["chartVersion"] == "pulsar-v3"
    rendered = yaml.safe_dump_all(objects)
    assert "minioadmin" not in rendered and "defaultRootPassword" not in rendered
    # the operator names the proxy Service <name>-milvus: what VS_MILVUS_URI dials
    host = named(objects, "ConfigMap", "search-config")["data"]["VS_MILVUS_URI"].split("//")[1].split(".")[0]
    assert host == f"{milvus['metadata']['name']}-milvus"
    assert re.search(r"Milvus operator v\d+\.\d+\.\d+", readme) and not (DEPLOY / "milvus" / "values.yaml").exists()


def test_triton_gets_its_models_from_a_pinned_model_image(objects):  # D3
    triton = named(objects, "Deployment", "triton")["spec"]["template"]["spec"]
    (init,) = triton["initContainers"]
    assert init["image"].startswith("registry.example.com/visualsearch/models:")
    target = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == "models")
    assert target in init["command"][-1]
    volume = next(v for v in triton["volumes"] if v["name"] == "models")
    assert "emptyDir" in volume
    assert not by_kind(objects, "PersistentVolumeClaim")
    dockerfile = (DEPLOY / "docker" / "models.Dockerfile").read_text()
    assert "COPY model_repository /models" in dockerfile


def test_no_volume_needs_read_write_many(objects):  # D4
    for claim in by_kind(objects, "PersistentVolumeClaim"):
        assert "ReadWriteMany" not in claim["spec"]["accessModes"], claim["metadata"]["name"]
    gpu = named(render("gpu"), "Deployment", "triton")["spec"]["template"]["spec"]
    assert "emptyDir" in next(v for v in gpu["volumes"] if v["name"] == "trt-cache")


def test_connections_have_an_age_so_clients_reach_new_pods(objects):  # D5
    args = named(objects, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any(a.startswith("--grpc-max-connection-age=") for a in args)
    settings = Settings.from_env(named(objects, "ConfigMap", "search-config")["data"], check_files=False)
    assert settings.max_connection_age_s <= 120


def test_hpa_managed_deployments_leave_replicas_to_the_hpa(objects):  # D7
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(objects, "HorizontalPodAutoscaler")}
    for deployment in by_kind(objects, "Deployment"):
        if deployment["metadata"]["name"] in targets:
            assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]


def test_prometheus_operator_objects_carry_the_label_it_selects(objects):  # D9
    for obj in by_kind(objects, "ServiceMonitor") + by_kind(objects, "PrometheusRule"):
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj["metadata"]["name"]
    assert not [c for c in by_kind(objects, "ConfigMap") if "adapter" in c["metadata"]["name"]]  # D10: Helm values


def test_a_node_drain_never_takes_every_pod_of_a_tier(objects):  # D11
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(objects, "HorizontalPodAutoscaler")}
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        name = pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        assert hpas[name]["spec"]["minReplicas"] > pdb["spec"].get("maxUnavailable", 0), name


def test_the_search_memory_limit_holds_its_in_flight_messages(objects):  # D14
    settings = Settings.from_env(named(objects, "ConfigMap", "search-config")["data"], check_files=False)
    limit = named(objects, "Deployment", "search")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    value, unit = re.fullmatch(r"(\d+)(Mi|Gi)", limit["memory"]).groups()
    limit_bytes = int(value) * (1 << (20 if unit == "Mi" else 30))
    assert limit_bytes >= 2 * settings.max_in_flight * settings.max_message_bytes + (512 << 20)
    hpa = named(objects, "HorizontalPodAutoscaler", "search")
    in_flight = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]["target"]["averageValue"]
    assert float(in_flight) == settings.max_in_flight / 2  # scale out well before shedding load


def test_a_reapply_or_delete_never_touches_namespaces(objects):  # D16 (and D15: no Secret with data)
    assert not by_kind(objects, "Namespace")
    assert not by_kind(objects, "Secret")


def test_the_docker_build_context_leaves_the_venv_and_data_out():  # D20
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "build", ".git", "data"} <= set(ignored)


def test_the_in_cluster_ghz_job_balances_over_every_search_pod(tmp_path):  # D21
    job_dir = tmp_path / "job"
    shutil.copytree(DEPLOY / "loadtest" / "job", job_dir)
    (job_dir / "search_request.bin").write_bytes(b"payload")
    objects = render(job_dir)
    config = json.loads(named(objects, "ConfigMap", next(c["metadata"]["name"] for c in by_kind(objects, "ConfigMap"))
                              )["data"]["ghz.json"])
    assert config["host"].startswith("dns:///search.visualsearch.svc") and config["lb-strategy"] == "round_robin"
    job = by_kind(objects, "Job")[0]
    for obj in objects:
        if obj["kind"] != "Certificate":
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
    search_policy = named(render("cpu"), "NetworkPolicy", "search")
    assert admits(search_policy, pods([job])["ghz-search"], 50051)


def test_the_30m_component_sizes_milvus_as_the_measured_capacity_plan_says(tmp_path):
    """Query nodes that schedule, two loaded copies, the segment size measured, and MinIO /
    Pulsar volumes that hold the catalog, all equal to what tools/bench/capacity.py computes
    from the measured runs (docs/scale/*.json) for the configuration it plans."""
    from tools.bench.capacity import PLAN, PLANNED, planned

    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    overlay = copy / "overlays" / "gpu" / "kustomization.yaml"
    kustomization = yaml.safe_load(overlay.read_text())
    kustomization["components"].append("../../milvus/30m")
    overlay.write_text(yaml.safe_dump(kustomization))
    objects = render(overlay.parent)
    milvus = by_kind(objects, "Milvus")[0]["spec"]
    figures, volumes = planned()
    query = milvus["components"]["queryNode"]
    assert query["replicas"] == figures["query_nodes"]
    search_config = named(objects, "ConfigMap", "search-config")["data"]
    assert search_config["VS_MILVUS_REPLICAS"] == str(PLAN["replicas"])
    assert search_config["VS_MILVUS_SHARDS"] == str(PLAN["shards"])
    assert search_config["VS_INDEX_TYPE"] == PLANNED["index_type"]
    assert milvus["config"]["dataCoord"]["segment"]["maxSize"] == PLANNED["segment_max_mb"]
    # a query node's requests fit the allocatable of the node the plan names (its capacity less
    # ~1 core and 6 GiB kept by the kubelet and system daemons), and hold the share the plan uses
    cpu, memory_gib = float(query["resources"]["requests"]["cpu"]), gib(query["resources"]["requests"]["memory"])
    assert PLAN["node_cores"] * PLAN["usable"] <= cpu <= PLAN["node_cores"] - 1
    assert PLAN["node_memory_gib"] * PLAN["usable"] <= memory_gib <= PLAN["node_memory_gib"] - 6
    minio = milvus["dependencies"]["storage"]["inCluster"]["values"]
    assert minio["mode"] == "distributed" and gib(minio["persistence"]["size"]) == volumes["minio_drive_gib"]
    ledgers = milvus["dependencies"]["pulsar"]["inCluster"]["values"]["bookkeeper"]["volumes"]["ledgers"]
    assert gib(ledgers["size"]) == volumes["bookie_ledgers_gib"]
    assert "30m" not in (DEPLOY / "overlays" / "gpu" / "kustomization.yaml").read_text()  # opt-in


def gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Ti)", quantity).groups()
    return float(number) * (1024 if unit == "Ti" else 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_of_our_images_names_the_registry_pull_secret(overlay):
    """Item 11: a private registry needs pull credentials; each pod gets them from its
    ServiceAccount or its own spec."""
    objects = render(overlay) + render(DEPLOY / "jobs") + render(DEPLOY / "rollout" / overlay)
    accounts = {a["metadata"]["name"]: a for a in by_kind(objects, "ServiceAccount")}
    for workload in (o for o in objects if o["kind"] in (*WORKLOADS, "Job")):
        pod = workload["spec"]["template"]["spec"]
        if not any(c["image"].startswith("registry.example.com/") for c in pod["containers"]):
            continue
        secrets = pod.get("imagePullSecrets") or accounts.get(pod.get("serviceAccountName", ""), {}).get(
            "imagePullSecrets", [])
        assert {"name": "visualsearch-registry"} in secrets, workload["metadata"]["name"]
    assert "visualsearch-registry" in (DEPLOY / "README.md").read_text().split("## Deploy")[0]  # a prerequisite
