"""The crops model's two configs make the same embedder input: the GPU config's ONNX graph
(run here by ONNX Runtime on CPU) against the CPU config's Pillow crops, on real photos with
the real detector's boxes, compared as pixels and as the real embedder's vectors."""

from __future__ import annotations

import numpy as np
import pytest

from services.triton_models import imaging, views
from tests.integration.conftest import REPOSITORY
from tools.models import crop_graph, repository
from tools.models import manifest as mf
from tools.models.local_pipeline import LocalPipeline
from tools.sample_photos import encode


@pytest.fixture(scope="module")
def pipeline():
    return LocalPipeline.from_repository(variant="gpu")  # the float files, as GPU pods serve them


@pytest.fixture(scope="module")
def graph():
    return crop_graph.CropGraph(REPOSITORY / repository.CROPS / "1" / mf.MODEL_NAME)


def _both(pipeline, graph, pixels):
    """Pillow's and the graph's crops of one photo's detected objects and whole-image views."""
    decoded = pipeline.decode(encode(pixels))
    found = pipeline.locate(decoded)
    views_count = pipeline.settings.detection.whole_image_views
    pillow = imaging.crops_of(decoded.pixels, found.crop_boxes, pipeline.crop_size, views_count)
    return found, pillow, graph.crops(decoded.pixels, found.crop_boxes, views_count)


def test_the_graph_crops_real_photos_as_pillow_does(pipeline, graph, photos):
    objects, crop_cos, whole_cos = 0, [], []
    for name in ("coffee", "motorcycle_left", "cat", "astronaut", "rocket", "china", "flower"):
        found, pillow, graphed = _both(pipeline, graph, photos[name].pixels)
        assert graphed.shape == pillow.shape and graphed.dtype == np.uint8, name
        objects += len(found.crop_boxes)
        # a grey level or so apart on average: the resampling filters differ, not the pixels taken
        assert np.abs(graphed.astype(np.int16) - pillow).mean(axis=(1, 2, 3)).max() < 2.0, name
        a, b = pipeline.embed(pillow), pipeline.embed(graphed)
        crop_cos += list((a * b).sum(axis=1))
        rows = len(found.boxes)
        whole_cos.append(float(views.pool_views(a, rows)[-1] @ views.pool_views(b, rows)[-1]))
    assert objects >= 20  # the detector's boxes, not only the whole image
    assert min(crop_cos) >= 0.95 and np.mean(crop_cos) >= 0.99, (min(crop_cos), np.mean(crop_cos))
    assert min(whole_cos) >= 0.98, whole_cos


@pytest.mark.parametrize("view_count", [1, 2, 3, 4])
def test_the_graph_makes_as_many_views_as_asked_and_crops_nothing_without_boxes(graph, photos, view_count):
    pixels = photos["coffee"].pixels
    crops = graph.crops(pixels, np.zeros((0, 4), np.float32), view_count)
    expected = views.whole_image_views(pixels, crops.shape[-1], view_count)
    assert crops.shape == expected.shape
    assert np.abs(crops.astype(np.int16) - expected).mean() < 2.0
