"""An embedder served exactly as published (SSCD, opt-in; its licence forbids changing the
file): the real Triton CPU variant feeds it through the adapter in the CPU embedder model,
and the vectors equal what the unmodified file computes on the same crops."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from services.triton_models import imaging, views
from tests.conftest import BUILD, require
from tests.integration.conftest import free_port
from tests.integration.triton_calls import detect_and_embed
from tools.models import manifest as mf
from tools.models.repository import PipelineSettings, copy_variant
from tools.sample_photos import encode
from tools.stack.triton_launcher import TritonServer

SSCD = BUILD / "models" / "sscd"


@pytest.fixture(scope="module")
def sscd_client(tmp_path_factory):
    require(SSCD / mf.MODEL_NAME, "the SSCD embedder", "`make models` builds every built-in into build/models/")
    folder = tmp_path_factory.mktemp("sscd")
    repository = copy_variant(folder / "repository", embedder=SSCD)
    with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "triton.log") as server:
        yield grpcclient.InferenceServerClient(server.grpc_url)


def test_the_published_file_is_served_unchanged_and_returns_its_own_vectors(sscd_client, photos):
    manifest = mf.load(SSCD)
    data = encode(photos["coffee"].pixels)
    out = detect_and_embed(sscd_client, data)
    vectors = out["EMBEDDINGS"]
    assert vectors.shape[1] == 512
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    # the whole image (last row): the mean of its views, computed by the published file itself
    settings = PipelineSettings.from_repository()
    decoded = imaging.decode(data, settings.max_pixels, settings.work_side)
    crops = views.whole_image_views(decoded.pixels, manifest["serving"]["input"]["shape"][1],
                                    settings.detection.whole_image_views)
    session = ort.InferenceSession(str(SSCD / mf.MODEL_NAME), providers=["CPUExecutionProvider"])
    expected = views.pool_views(session.run(["embedding"], {"image": crops.transpose(0, 2, 3, 1)})[0], 1)[0]
    assert float(vectors[-1] @ expected) > 0.999
