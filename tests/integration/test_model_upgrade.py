"""Changing the embedder without downtime, against the real Milvus server: the new models'
collection is built beside the live one while a search pod keeps answering, the alias switch
is atomic, no search fails or mixes models, the new pod reads the new collection, and a pod
started with the old models refuses it and says why."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import grpc
import pytest

from services.api import pb
from services.paths import BUILD as GEN_BUILD
from services.paths import ROOT
from tests.conftest import BUILD, require
from tests.integration.conftest import free_port
from tests.integration.service_process import ServiceProcess
from tools.models import manifest as mf
from tools.models import repository
from tools.sample_photos import encode, reshoot
from tools.stack.demo import write_demo_catalog
from tools.stack.local_stack import start_search_service
from tools.stack.milvus_processes import MilvusServer
from tools.stack.triton_launcher import TritonServer

ALIAS = "shop"


def other_embedder():
    """A built-in embedder that is not the installed one."""
    installed = repository.installed("embedder")[1]["name"]
    name = next(n for n in ("efficientnet-lite0", "resnet50-opennsfw") if n != installed)
    return BUILD / "models" / name


@pytest.fixture(scope="module")
def new_triton(tmp_path_factory):
    other = other_embedder()
    require(other / mf.MODEL_NAME, f"the {other.name} embedder", "`make models` builds every built-in")
    folder = tmp_path_factory.mktemp("new-models")
    new_repository = repository.copy_variant(folder / "repository", embedder=other)
    with TritonServer(new_repository, free_port(), free_port(), free_port(), log_path=folder / "triton.log") as server:
        yield server


def upgrade(command: str, triton_url: str, milvus: MilvusServer, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{GEN_BUILD / 'gen'}:{ROOT}", "VS_MILVUS_URI": milvus.uri,
           "VS_MILVUS_TOKEN": milvus.service_token, "VS_MILVUS_COLLECTION": ALIAS}
    return subprocess.run([sys.executable, "-m", "services.catalog_upgrade", command, "--triton", triton_url, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_embedder_changes_without_a_failed_or_mixed_search(triton, new_triton, milvus_server, tmp_path, photos):
    manifest = write_demo_catalog(tmp_path / "catalog")
    old = ServiceProcess(triton.grpc_url, milvus_server.uri, tmp_path / "old.log", VS_MILVUS_COLLECTION=ALIAS,
                         VS_MILVUS_TOKEN=milvus_server.service_token).start()
    try:
        subprocess.run([sys.executable, "-m", "services.importer", "--address", old.address, "--manifest",
                        str(manifest), "--no-progress"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": f"{GEN_BUILD / 'gen'}:{ROOT}"})
        old_collection = old.catalog.GetCatalogStats(pb.GetCatalogStatsRequest()).collection
        shot = encode(reshoot(photos["coffee"], photos["flower"].pixels, seed=11), quality=60)
        request = pb.SearchByImageRequest(image=shot, top_k=3)
        expected = old.search.SearchByImage(request, timeout=60)
        answers: list[pb.SearchByImageResponse] = []
        errors: list[str] = []
        stop = threading.Event()

        def keep_searching() -> None:
            while not stop.is_set():
                try:
                    answers.append(old.search.SearchByImage(request, timeout=60))
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")

        searcher = threading.Thread(target=keep_searching)
        searcher.start()
        try:
            built = upgrade("build", new_triton.grpc_url, milvus_server, "--manifest", str(manifest))
            assert built.returncode == 0, built.stderr[-2000:]
            switched = upgrade("switch", new_triton.grpc_url, milvus_server)
            assert switched.returncode == 0, switched.stderr[-2000:]
            assert old_collection in switched.stdout
            settled = len(answers)
            while len(answers) < settled + 3 and not errors:  # the old pod goes on after the switch
                threading.Event().wait(0.2)
        finally:
            stop.set()
            searcher.join()
        assert not errors, errors[:3]
        assert len(answers) >= 3
        for answer in answers:  # every answer came from the old models' vectors only
            assert answer.models.embedder_sha256 == expected.models.embedder_sha256
            assert [(m.product_id, round(m.similarity, 4)) for m in answer.products] == \
                [(m.product_id, round(m.similarity, 4)) for m in expected.products]
    finally:
        old.stop()

    new = ServiceProcess(new_triton.grpc_url, milvus_server.uri, tmp_path / "new.log",
                         VS_MILVUS_COLLECTION=ALIAS, VS_MILVUS_TOKEN=milvus_server.service_token).start()
    try:
        stats = new.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert stats.collection != old_collection and stats.models.embedder == other_embedder().name
        assert stats.products == 7
        response = new.search.SearchByImage(request, timeout=60)
        assert "mug-001" in [g.matches[0].product_id for g in response.objects if g.matches]  # the new models find it
    finally:
        new.stop()

    # a pod still on the old models refuses the switched alias and names both collections
    with pytest.raises(TimeoutError, match="was not built for the models Triton serves"):
        start_search_service(f"127.0.0.1:{free_port()}", triton.grpc_url, milvus_server.uri, tmp_path / "stale.log",
                             timeout_s=20, VS_MILVUS_COLLECTION=ALIAS, VS_METRICS_PORT="0",
                             VS_MILVUS_TOKEN=milvus_server.service_token)


def test_an_alias_whose_collection_was_dropped_by_hand_points_to_the_new_collection(milvus_server):
    import dataclasses

    from pymilvus import MilvusClient

    from services.search.config import Settings
    from services.search.milvus_store import MilvusStore
    from services.search.triton_client import ModelVersions

    settings = dataclasses.replace(Settings.from_env({}), milvus_uri=milvus_server.uri,
                                   milvus_token=milvus_server.service_token, milvus_collection="dropped_by_hand")
    models = ModelVersions("det", "a" * 64, "emb", "b" * 64, 8)
    first = MilvusStore(settings)
    first.connect(models)
    first.disconnect()
    client = MilvusClient(uri=milvus_server.uri, token=milvus_server.admin_token)
    client.drop_collection(first.collection)  # Milvus 2.3 keeps the alias

    store = MilvusStore(settings)
    store.connect(models)  # before: "alias already exist", the service never became ready
    try:
        assert client.describe_alias("dropped_by_hand")["collection_name"] == store.collection
        assert store.stats()["products"] == 0
    finally:
        store.disconnect()
        client.drop_alias("dropped_by_hand")
        client.drop_collection(store.collection)
