"""What the preparation step bakes into an embedder graph: GeM pooling, the 256-d projection,
and serving a model exactly as published. A tiny convolutional graph stands in for a CNN."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tools.models import manifest as mf
from tools.models import prepare, whitening

SIZE, CHANNELS = 8, 6


def tiny_cnn(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    """input [N,3,8,8] float -> Conv 3x3 -> Relu ("map") -> GlobalAveragePool -> Flatten ("features")."""
    weights = rng.normal(size=(CHANNELS, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["map"]),
         helper.make_node("GlobalAveragePool", ["map"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"], axis=1)],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", CHANNELS])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, weights


def raw_manifest(**extra) -> dict:
    return {"role": "embedder", "name": "tiny", "license": "MIT", "input": {"name": "input", "size": SIZE},
            "output": {"name": "features"}, **extra}


def conv_map(pixels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    x = np.pad(pixels.astype(np.float32), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((len(x), CHANNELS, SIZE, SIZE), np.float32)
    for i in range(SIZE):
        for j in range(SIZE):
            out[:, :, i, j] = np.einsum("nchw,kchw->nk", x[:, :, i:i + 3, j:j + 3], weights)
    return np.maximum(out, 0)


def run(model: onnx.ModelProto, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"pixels": pixels})[0]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def pixels():
    return np.random.default_rng(1).integers(0, 256, (4, 3, SIZE, SIZE), dtype=np.uint8)


def test_gem_pooling_replaces_the_average_over_the_same_map(pixels):
    model, weights = tiny_cnn(np.random.default_rng(0))
    avg, _ = prepare.prepare_embedder(raw_manifest(), model)
    gem, extra = prepare.prepare_embedder(raw_manifest(pooling="gem"), model)
    fmap = conv_map(pixels, weights)
    expected_gem = unit((np.maximum(fmap, 1e-6) ** 3).mean((2, 3)) ** (1 / 3))
    np.testing.assert_allclose(run(avg, pixels), unit(fmap.mean((2, 3))), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run(gem, pixels), expected_gem, rtol=1e-4, atol=1e-5)
    assert extra["pooling"] == "gem"
    assert not np.allclose(run(avg, pixels), run(gem, pixels), atol=1e-3)


def test_gem_needs_a_global_average_pooling_to_replace():
    model, _ = tiny_cnn(np.random.default_rng(0))
    with pytest.raises(mf.ManifestError, match="global average pooling"):
        prepare.prepare_embedder(raw_manifest(pooling="gem", output={"name": "map"}), model)
    with pytest.raises(mf.ManifestError, match="pooling must be"):
        prepare.prepare_embedder(raw_manifest(pooling="max"), model)


def test_whitening_projects_to_unit_vectors_of_the_fitted_directions(pixels):
    model, _ = tiny_cnn(np.random.default_rng(0))
    served, _ = prepare.prepare_embedder(raw_manifest(), model)
    full = run(served, np.random.default_rng(2).integers(0, 256, (64, 3, SIZE, SIZE), dtype=np.uint8))
    mean, projection = whitening.fit(full, 3, power=0.5)
    assert projection.shape == (CHANNELS, 3)
    # whitened: the reference vectors have unit variance along each kept direction
    np.testing.assert_allclose(((full - mean) @ projection).var(0), 1, rtol=1e-2)
    baked = whitening.bake(served, mean, projection)
    onnx.checker.check_model(baked)
    expected = unit((run(prepare.prepare_embedder(raw_manifest(), model)[0], pixels) - mean) @ projection)
    np.testing.assert_allclose(run(baked, pixels), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="cannot fit"):
        whitening.fit(full[:2], 3, power=0.5)


def test_learned_whitening_damps_what_differs_between_two_shots_of_one_thing():
    rng = np.random.default_rng(3)
    things = rng.normal(size=(100, 8))
    # the nuisance (lighting, framing) moves dimension 0 more than anything that tells things apart
    shot = things + np.outer(rng.normal(scale=4.0, size=100), np.eye(8)[0]) + rng.normal(scale=0.05, size=(100, 8))
    mean, projection = whitening.fit_learned(things, shot, 4)
    assert projection.shape == (8, 4)
    pca_mean, pca = whitening.fit(np.concatenate([things, shot]), 4, power=0.0)

    def matched(m: np.ndarray, p: np.ndarray) -> float:
        a, b = unit((things - m) @ p), unit((shot - m) @ p)
        return float((np.argmax(b @ a.T, 1) == np.arange(len(a))).mean())

    # PCA keeps the nuisance's direction (the largest variance); the learned projection leaves it out
    assert abs(unit(pca.T)[0, 0]) > 0.9
    assert np.abs(unit(projection.T)[:, 0]).max() < 0.1
    assert matched(mean, projection) > 0.9 > 0.3 > matched(pca_mean, pca)
    with pytest.raises(ValueError, match="as many anchors"):
        whitening.fit_learned(things, shot[:-1], 2)


def test_reference_pairs_frame_one_region_as_a_catalog_shot_and_as_a_shopper_photo(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 120, (300, 400, 3), dtype=np.uint8)).save(photo)
    anchors, positives = whitening.reference_pairs([photo], SIZE * 4, per_photo=5)
    assert anchors.shape == positives.shape == (5, 3, SIZE * 4, SIZE * 4)
    assert anchors.dtype == positives.dtype == np.uint8
    # the catalog-like crop sits on a plain light background; the photo itself is dark
    assert (anchors[:, :, 0, 0] >= 225).all() and (anchors[:, :, 0, 0] == anchors[:, :1, 0, 0]).all()
    assert (positives.reshape(5, -1).mean(1) < 150).all()


def test_cutout_pairs_show_a_cutout_on_a_studio_background_and_inside_another_photo(tmp_path):
    from PIL import Image

    # the cut-outs come from a red photo, the scenes are a blue one (and the red one)
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (400, 300), (200, 20, 20)).save(red)
    Image.new("RGB", (400, 300), (20, 20, 200)).save(blue)
    anchors, positives = whitening.cutout_pairs([red, blue], 64, per_photo=6, seed=3)
    assert anchors.shape == positives.shape == (12, 3, 64, 64)
    first = slice(0, 6)  # cut out of the red photo
    # catalog side: light plain corners (the blob does not reach them), red in the middle
    assert (anchors[first, :, 0, 0] >= 225).all()
    assert (anchors[first, 0, 32, 32] > 150).all() and (anchors[first, 2, 32, 32] < 80).all()
    # shopper side: the red cut-out sits in the blue photo, so its crop holds both colours
    red_share = ((positives[first, 0] > 120) & (positives[first, 2] < 100)).mean(axis=(1, 2))
    blue_share = ((positives[first, 2] > 120) & (positives[first, 0] < 100)).mean(axis=(1, 2))
    assert (red_share > 0.2).all() and (blue_share > 0.02).all(), (red_share, blue_share)
    again = whitening.cutout_pairs([red, blue], 64, per_photo=6, seed=3)
    np.testing.assert_array_equal(again[1], positives)
    with pytest.raises(ValueError, match="two photos"):
        whitening.cutout_pairs([red], 64)


def test_a_model_whose_licence_forbids_changes_is_served_byte_for_byte(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    # a uint8 NHWC model returning unit vectors, like the published SSCD file
    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("LpNormalization", ["m"], ["embedding"], axis=1, p=2)],
        "published", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["n", "h", "w", 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(raw / mf.MODEL_NAME))
    (raw / mf.MANIFEST_NAME).write_text(json.dumps(raw_manifest(
        rewrite=False, input={"name": "image", "layout": "NHWC", "size": 16, "dtype": "uint8"},
        output={"name": "embedding"})))
    served = prepare.prepare(raw, tmp_path / "served")
    assert (tmp_path / "served" / mf.MODEL_NAME).read_bytes() == (raw / mf.MODEL_NAME).read_bytes()
    assert served["serving"]["input"] == {"name": "pixels", "shape": [3, 16, 16], "dtype": "uint8"}
    assert served["serving"]["model_input"] == {"name": "image", "layout": "NHWC"}
    assert served["serving"]["output"]["shape"] == [3]
    # a float-input model cannot be fed the pipeline's pixels as published
    (raw / mf.MANIFEST_NAME).write_text(json.dumps(raw_manifest(
        rewrite=False, input={"name": "image", "layout": "NHWC", "size": 16, "dtype": "float32"},
        output={"name": "embedding"})))
    with pytest.raises(mf.ManifestError, match="uint8 RGB"):
        prepare.prepare(raw, tmp_path / "served2")


def test_a_served_as_published_embedder_is_never_projected(tmp_path):
    from tools.models import build

    # refused before anything is fetched: projecting would rewrite a file whose licence forbids it
    with pytest.raises(mf.ManifestError, match="exactly as published"):
        build.builtin_model("sscd", tmp_path, dimension=256)
    with pytest.raises(mf.ManifestError, match="built-in embedders only"):
        build.resolve(str(tmp_path), "embedder", tmp_path, dimension=256)


def test_only_the_detector_exports_at_another_input_side_and_only_at_sides_it_can_trace(tmp_path):
    from tools.models import build

    # both refused before anything is fetched or exported
    with pytest.raises(mf.ManifestError, match="exported at its own input size only"):
        build.builtin_model("efficientnet-lite0", tmp_path, image_size=256)
    with pytest.raises(mf.ManifestError, match=r"input sides \[480, 576, 640, 672\] only, not 600"):
        build.builtin_model("yolov8s-world", tmp_path, image_size=600)
    assert not any(tmp_path.iterdir())


def test_the_embedding_dimension_setting_must_be_a_number(capsys):
    from tools.models import build

    with pytest.raises(SystemExit):
        build.main(["--dimension", "256d"])
    assert "--dimension must be a whole number, not '256d'" in capsys.readouterr().err
