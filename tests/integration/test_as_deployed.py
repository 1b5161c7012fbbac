"""The containers of the rendered CPU overlay and of deploy/jobs, started here as their
manifests say (tests/integration/as_deployed.py: their own command, args, env and probes;
mounts, host names and executables mapped): Triton on the model repository, the search
service on it and on a real Milvus server with authorization on (as the least-privilege
user), then the import and catalog-upgrade Jobs against them. Each long-running container must
pass its own startup, readiness and liveness probes, and every port its Services and
ServiceMonitors name must answer (metrics in the Prometheus text format)."""

from __future__ import annotations

import ast
import json
import re
import socket
import sys
from dataclasses import replace
from pathlib import Path

from services.paths import ROOT
from tests.dockerfiles import copied_sources
from tests.integration.as_deployed import Mapping, entrypoint, image_env, run_to_completion, start
from tests.integration.manifests import DEPLOY, by_kind, named, render
from tools.cache import default_cache
from tools.models.repository import REPOSITORY
from tools.stack.certificates import CertificateAuthority
from tools.stack.demo import write_demo_catalog
from tools.stack.triton_launcher import prepare_backends, pytriton_root, server_env

HOSTS = ("triton.visualsearch.svc.cluster.local", "triton-next.visualsearch.svc.cluster.local",
         "milvus-milvus.milvus.svc.cluster.local", "search.visualsearch.svc.cluster.local")


def pod_of(objects: list[dict], kind: str, name: str) -> dict:
    return named(objects, kind, name)["spec"]["template"]["spec"]


def served_ports(objects: list[dict], app: str) -> set[tuple[str, str]]:
    """(port name, path) of every Service port and ServiceMonitor endpoint for the pods of ``app``."""
    ports = {(p["targetPort"], "") for s in by_kind(objects, "Service")
             if s["spec"]["selector"].get("app.kubernetes.io/name") == app for p in s["spec"]["ports"]}
    ports |= {(e["port"], e.get("path", "/metrics")) for m in by_kind(objects, "ServiceMonitor")
              if m["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") == app
              for e in m["spec"]["endpoints"]}
    return ports


def secret_files(folder: Path, files: dict[str, Path | bytes]) -> Path:
    """A Secret volume: its keys as files."""
    folder.mkdir(parents=True)
    for key, content in files.items():
        (folder / key).write_bytes(content if isinstance(content, bytes) else content.read_bytes())
    return folder


def test_triton_search_and_the_catalog_jobs_start_and_serve_as_deployed(milvus_server, tmp_path):
    objects = render("cpu") + render(DEPLOY / "jobs")
    ca = CertificateAuthority(tmp_path / "pki")
    search_tls = named(objects, "Certificate", "search-tls")["spec"]
    server = ca.issue("search", server=True, dns_names=tuple(search_tls["dnsNames"]))
    importer_name = named(objects, "Certificate", "catalog-importer")["spec"]["commonName"]
    importer = ca.issue(importer_name)
    policy = {"callers": [{"name": importer_name, "roles": ["search", "catalog.write", "catalog.read"],
                           "certificate": importer_name}]}
    models = tmp_path / "models"
    models.mkdir()
    for entry in REPOSITORY.iterdir():  # what the models init container copies in
        if entry.is_dir():
            (models / entry.name).symlink_to(entry.resolve())
    catalog = write_demo_catalog(tmp_path / "catalog").parent
    backends = prepare_backends(default_cache())  # the NGC image has its backends at the default path
    mapping = Mapping(
        folders={"/models": models, "/repository": models,
                 "/etc/visualsearch/tls": secret_files(tmp_path / "search-tls", {
                     "tls.crt": server.cert, "tls.key": server.key, "ca.crt": ca.cert}),
                 "/etc/visualsearch/auth": secret_files(tmp_path / "policy", {
                     "policy.json": json.dumps(policy).encode()}),
                 "/catalog": catalog,
                 "/pki": secret_files(tmp_path / "importer-tls", {
                     "tls.crt": importer.cert, "tls.key": importer.key, "ca.crt": ca.cert}),
                 "/cache": tmp_path / "cache", "/app": ROOT},
        hosts=HOSTS,
        executables={"tritonserver": [str(pytriton_root() / "bin" / "tritonserver"), f"--backend-directory={backends}"],
                     "python": [sys.executable]},
        secrets={"search-secrets": {"VS_MILVUS_TOKEN": milvus_server.service_token}})
    (tmp_path / "cache").mkdir()
    running = []
    try:
        triton_pod = pod_of(objects, "Deployment", "triton")
        triton = start(triton_pod, triton_pod["containers"][0], objects,
                       replace(mapping, env=server_env()), entrypoint("triton.Dockerfile"),
                       tmp_path, cwd=ROOT)  # the image's visualsearch.pth: the models' code on the stubs' path
        running.append(triton)
        triton.wait_started()

        search_pod = pod_of(objects, "Deployment", "search")
        search = start(search_pod, search_pod["containers"][0], objects,
                       replace(mapping, env=image_env("search.Dockerfile")),
                       entrypoint("search.Dockerfile"), tmp_path)
        running.append(search)
        search.wait_started()

        for process, app in ((triton, "triton"), (search, "search")):
            container = process.container
            process.wait_ready(timeout_s=180)
            assert process.probe(container["livenessProbe"]), f"{app} not live:\n{process.tail()}"
            for port, path in served_ports(objects, app):
                number = process.port(port)
                if path:  # a ServiceMonitor's endpoint: Prometheus text
                    assert process.metrics(number, path), f"{app} :{number}{path} serves no metrics"
                else:  # a Service port: something listens
                    with socket.create_connection(("127.0.0.1", number), timeout=5):
                        pass

        for job in ("catalog-import", "catalog-upgrade"):
            pod = pod_of(objects, "Job", job)
            code, log = run_to_completion(pod, pod["containers"][0], objects,
                                          replace(mapping, env=image_env("search.Dockerfile")),
                                          entrypoint("search.Dockerfile"), tmp_path, timeout_s=300)
            assert code == 0, f"{job} failed:\n{log[-3000:]}"
            imported = re.search(r"imported (\d+) products, (\d+) images, \d+ vectors; 0 images failed", log)
            assert imported and int(imported.group(2)) > 0, f"{job}:\n{log[-3000:]}"
        assert search.process.poll() is None and triton.process.poll() is None
    finally:
        for process in reversed(running):
            process.stop()


def test_every_python_module_a_search_image_container_runs_is_in_the_image():
    """The image has only what its Dockerfile copies: a Job or a documented step that runs a
    module it lacks fails at once in the cluster."""
    copied = copied_sources((DEPLOY / "docker" / "search.Dockerfile").read_text())
    in_image = {Path(p) for p in copied}

    def shipped(module: str) -> bool:
        path = Path(*module.split("."))
        if (ROOT / path).is_dir():  # a package: its __init__, or the whole folder
            return any(p in (path / "__init__.py", path) or p in path.parents for p in in_image)
        return any(p == path.with_suffix(".py") or p in path.parents for p in in_image)

    objects = render("cpu") + render(DEPLOY / "jobs")
    commands = [c.get("command") or entrypoint("search.Dockerfile")
                for o in objects if o["kind"] in ("Deployment", "Job")
                for c in o["spec"]["template"]["spec"]["containers"] if c["image"].split(":")[0].endswith("/search")]
    modules = {cmd[cmd.index("-m") + 1] for cmd in commands}
    # and the operator steps deploy/README runs from a pod with the search image
    modules |= set(re.findall(r"python -m (services\.[\w.]+)", (DEPLOY / "README.md").read_text()))
    assert modules >= {"services.search.server", "services.importer", "services.catalog_upgrade",
                       "services.milvus_access"}
    missing = sorted(m for m in modules if not shipped(m))
    assert not missing, f"not in the search image: {missing}"
    # and what those modules import from services/ is there too
    for module in modules:
        tree = ast.parse((ROOT / Path(*module.split("."))).with_suffix(".py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                    and n.module.startswith("services")}
        imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                     == "services" for a in n.names}
        assert all(shipped(m) for m in imported), (module, sorted(m for m in imported if not shipped(m)))

