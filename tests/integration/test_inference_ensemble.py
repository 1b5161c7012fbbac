"""The inference tier end to end: real tritonserver, real ONNX weights, real photos."""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from services.search import triton_client as tc
from services.triton_models.model_args import config_file_parameters, int8_sha256, pipeline_fingerprint
from tests.integration.conftest import REPOSITORY, free_port
from tests.integration.triton_calls import detect_and_embed, embed_region
from tools.models.local_pipeline import LocalPipeline
from tools.sample_photos import box_iou, encode
from tools.stack.triton_launcher import TritonServer, probe_inference


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def results(client, photos):
    return {name: detect_and_embed(client, encode(p.pixels)) for name, p in photos.items()}


def best(result, label):
    idx = [i for i, lab in enumerate(result["LABELS"]) if lab == label]
    assert idx, f"no {label!r} among {result['LABELS']}"
    return max(idx, key=lambda i: result["SCORES"][i])


@pytest.mark.parametrize("name", ["coffee", "motorcycle_left", "motorcycle_right", "cat", "astronaut"])
def test_detector_finds_the_labelled_object_with_a_sane_box(results, photos, name):
    photo, result = photos[name], results[name]
    i = best(result, photo.label)
    assert result["SCORES"][i] > 0.5
    assert box_iou(result["BOXES"][i], photo.box) > 0.8, (result["BOXES"][i], photo.box)
    assert not result["FALLBACK"][0]


def test_boxes_are_in_original_pixels_for_a_large_rotated_photo(client, photos):
    # 4x upscaled and EXIF-rotated: boxes must come back in the *displayed* original pixels.
    import io

    from PIL import Image

    photo = photos["coffee"]
    big = Image.fromarray(photo.pixels).resize((2400, 1600)).rotate(90, expand=True)  # stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise -> upright again
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    result = detect_and_embed(client, buf.getvalue())
    i = best(result, "cup")
    expected = [v * 4 for v in photo.box]
    assert box_iou(result["BOXES"][i], expected) > 0.75, (result["BOXES"][i], expected)


def test_embeddings_are_unit_vectors(results):
    for result in results.values():
        norms = np.linalg.norm(result["EMBEDDINGS"], axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)
        assert len(result["EMBEDDINGS"]) == len(result["BOXES"]) == len(result["LABELS"])


def test_left_motorcycle_is_nearest_to_the_right_motorcycle(results):
    left = results["motorcycle_left"]
    right = results["motorcycle_right"]
    query = left["EMBEDDINGS"][best(left, "motorcycle")]
    target = right["EMBEDDINGS"][best(right, "motorcycle")]
    target_sim = float(query @ target)
    others = []
    for name, result in results.items():
        for j, emb in enumerate(result["EMBEDDINGS"]):
            if name == "motorcycle_left" or (name == "motorcycle_right" and j == best(right, "motorcycle")):
                continue
            if result["LABELS"][j] == "image":  # whole photos are not objects
                continue
            others.append((float(query @ emb), name, result["LABELS"][j]))
    assert others, "no other objects to compare with"
    assert target_sim > max(others)[0], (target_sim, sorted(others)[-3:])


def test_ensemble_equals_in_process_onnxruntime(results, photos):
    local = LocalPipeline.from_repository()
    for name in ("coffee", "motorcycle_left", "rocket"):
        expected = local.detect_and_embed(encode(photos[name].pixels))
        got = results[name]
        assert got["LABELS"] == expected.labels
        np.testing.assert_allclose(got["BOXES"], expected.boxes, atol=0.5)
        np.testing.assert_allclose(got["SCORES"], expected.scores, atol=1e-3)
        np.testing.assert_allclose(got["EMBEDDINGS"], expected.embeddings, atol=2e-4)
        assert bool(got["FALLBACK"][0]) == expected.fallback


def test_the_whole_photo_is_the_mean_of_its_views(client, photos, results):
    # a region covering the whole photo embeds its one plain view: close to, not equal to, the mean
    for name in ("coffee", "cat"):
        plain = embed_region(client, encode(photos[name].pixels), [0, 0, 0, 0])["EMBEDDINGS"][0]
        pooled = results[name]["EMBEDDINGS"][-1]
        np.testing.assert_allclose(np.linalg.norm(pooled), 1.0, atol=1e-4)
        assert 0.7 < float(plain @ pooled) < 0.995, name


def test_model_info_reports_the_pipeline_settings_it_serves(client):
    versions = tc.model_versions_from(client.infer(tc.MODEL_INFO, []))
    configs = [REPOSITORY / name / "config.pbtxt" for name in ("preprocess", "postprocess")]
    manifests = tuple(json.loads((REPOSITORY / role / "manifest.json").read_text())
                      for role in ("detector", "embedder"))
    assert all(int8_sha256(m) for m in manifests)  # the INT8 copies the CPU configs serve are part of it
    assert versions.pipeline == pipeline_fingerprint(configs, manifests) != pipeline_fingerprint(configs)
    # what the service (and every response's ModelInfo) learns: Triton's detection settings and the
    # embedder's measured threshold, from the files Triton serves, not from copies
    post = config_file_parameters(configs[1])
    assert versions.detection_score_threshold == float(post["score_threshold"])
    assert versions.max_detected_objects == int(post["max_objects"])
    manifest = json.loads((REPOSITORY / "embedder" / "manifest.json").read_text())
    assert versions.recommended_min_similarity == manifest["quality"]["recommended_min_similarity"] > 0


@pytest.mark.parametrize("name", ["coffee", "astronaut"])
def test_max_objects_embeds_only_the_best_boxes_and_the_same_vectors(client, photos, results, name):
    full = results[name]
    assert len(full["LABELS"]) > 3, full["LABELS"]  # boxes to leave out
    few = detect_and_embed(client, encode(photos[name].pixels), max_objects=2)
    # the two highest-scored boxes of the full answer (its rows come best first), then the whole photo
    assert few["LABELS"] == [*full["LABELS"][:2], "image"]
    np.testing.assert_array_equal(few["BOXES"], full["BOXES"][[0, 1, -1]])
    np.testing.assert_allclose(few["EMBEDDINGS"], full["EMBEDDINGS"][[0, 1, -1]], atol=1e-5)
    # asking for more than the postprocess keeps gives what it keeps
    assert detect_and_embed(client, encode(photos[name].pixels), max_objects=99)["LABELS"] == full["LABELS"]


def test_min_score_drops_faint_boxes_before_the_best_are_chosen(client, photos, results):
    # The boxes come ranked by their class sum, not by the score shown: find a photo where a box
    # ranks above one that scores higher, and ask for the boxes down to the higher one's rank
    # with a floor between the two scores. The fainter box must not take the surer one's place.
    out_of_order = [(name, i, j) for name, full in results.items() for j in range(len(full["SCORES"]) - 1)
                    for i in range(j) if full["SCORES"][i] < full["SCORES"][j]]
    assert out_of_order, "every sample photo's boxes come in score order: nothing to test the floor on"
    name, i, j = out_of_order[0]
    full = results[name]
    scores = full["SCORES"]
    floor = float(scores[i] + scores[j]) / 2
    floored = detect_and_embed(client, encode(photos[name].pixels), max_objects=j, min_score=floor)
    kept = floored["SCORES"][:-1]
    assert len(kept) and (kept >= floor).all(), kept
    assert any(np.allclose(box, full["BOXES"][j]) for box in floored["BOXES"][:-1]), (name, i, j, kept)
    # the same boxes and vectors as the in-process reference of the postprocess
    expected = LocalPipeline.from_repository().detect_and_embed(encode(photos[name].pixels), j, floor)
    np.testing.assert_allclose(floored["BOXES"], expected.boxes, atol=0.5)
    np.testing.assert_allclose(floored["EMBEDDINGS"], expected.embeddings, atol=2e-4)
    # a floor above every box leaves the whole photo alone, flagged as nothing detected
    none = detect_and_embed(client, encode(photos[name].pixels), max_objects=j, min_score=0.999)
    assert none["LABELS"] == ["image"] and none["FALLBACK"][0]


def test_the_whole_photo_is_always_the_last_row(results, photos):
    for name, result in results.items():
        assert result["LABELS"][-1] == "image" and result["SCORES"][-1] == 0
        height, width = photos[name].pixels.shape[:2]
        np.testing.assert_allclose(result["BOXES"][-1], [0, 0, width, height], atol=0.5)


def test_no_detectable_object_returns_the_whole_image_fallback(client):
    plain = np.full((300, 500, 3), 180, np.uint8)
    result = detect_and_embed(client, encode(plain, "PNG"))
    assert bool(result["FALLBACK"][0]) is True
    assert result["LABELS"] == ["image"]
    np.testing.assert_allclose(result["BOXES"], [[0, 0, 500, 300]], atol=0.5)
    assert result["EMBEDDINGS"].shape[0] == 1


@pytest.mark.parametrize("payload, fragment", [
    (b"", "empty"),
    (b"definitely not an image", "not a decodable image"),
    ("truncated", "truncated or corrupt"),
])
def test_corrupt_image_is_a_triton_error_and_the_server_keeps_serving(client, photos, payload, fragment):
    if payload == "truncated":
        payload = encode(photos["coffee"].pixels)[:3000]
    with pytest.raises(InferenceServerException) as err:
        detect_and_embed(client, payload)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert fragment in err.value.message()
    assert detect_and_embed(client, encode(photos["cat"].pixels))["LABELS"][0] == "cat"


def test_region_entry_point_embeds_the_given_box_like_the_detector_crop(client, photos, results):
    coffee = results["coffee"]
    i = best(coffee, "cup")
    region = embed_region(client, encode(photos["coffee"].pixels), coffee["BOXES"][i])
    assert region["EMBEDDINGS"].shape == (1, coffee["EMBEDDINGS"].shape[1])
    assert float(region["EMBEDDINGS"][0] @ coffee["EMBEDDINGS"][i]) > 0.999
    whole = embed_region(client, encode(photos["coffee"].pixels), [0, 0, 0, 0])
    np.testing.assert_allclose(whole["BOXES"], [[0, 0, 600, 400]])
    with pytest.raises(InferenceServerException, match="outside"):
        embed_region(client, encode(photos["coffee"].pixels), [700, 500, 900, 600])


def test_concurrent_requests_are_batched_by_the_composing_models(client, photos, triton, results):
    def stats(model):
        s = client.get_inference_statistics(model).model_stats[0]
        return s.inference_count, s.execution_count

    before = {m: stats(m) for m in ("preprocess", "detector", "embedder")}
    names = list(photos) * 3
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        with grpcclient.InferenceServerClient(triton.grpc_url) as c2:
            batched = list(pool.map(lambda n: detect_and_embed(c2, encode(photos[n].pixels)), names))
    for model, (inf0, exe0) in before.items():
        inf1, exe1 = stats(model)
        assert inf1 - inf0 >= len(names)
        assert exe1 - exe0 < inf1 - inf0, f"{model}: no request was ever batched"
    # a batch runs in parts on several cores: every photo still gets its own answer
    for name, got in zip(names, batched, strict=True):
        assert got["LABELS"] == results[name]["LABELS"], name
        np.testing.assert_allclose(got["BOXES"], results[name]["BOXES"], atol=0.5)
        np.testing.assert_allclose(got["EMBEDDINGS"], results[name]["EMBEDDINGS"], atol=1e-3)


def test_killed_python_stub_is_detected_and_recovered(tmp_path):
    import psutil

    # its own server: a failed recovery must not break the other tests' Triton
    with TritonServer(REPOSITORY, free_port(), free_port(), free_port(), log_path=tmp_path / "t.log") as server:
        stubs = [p for p in psutil.Process(server.process.pid).children(recursive=True)
                 if "triton_python_backend_stub" in " ".join(p.cmdline()) and "postprocess" in " ".join(p.cmdline())]
        assert stubs, "no postprocess stub process found"
        for stub in stubs:
            stub.kill()
        with pytest.raises(InferenceServerException, match="[Ss]tub"):
            probe_inference(server.grpc_url, timeout_s=30)
        assert server.recover_stubs() == ["postprocess"]
        probe_inference(server.grpc_url, timeout_s=60)
