"""The rendered repositories and the model manifests (no server needed)."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from services.models import manifest as mf
from services.models import repository
from services.models.build import BUILTIN, custom_model, resolve
from tests.conftest import BUILD

REPO = BUILD / "model_repository"


def configs(variant):
    return {p.parent.name: repository.load_config(p) for p in (REPO / variant).glob("*/config.pbtxt")}


def io_signature(cfg):
    return ([(t.name, t.data_type, list(t.dims)) for t in cfg.input],
            [(t.name, t.data_type, list(t.dims)) for t in cfg.output])


def test_cpu_and_gpu_variants_agree_on_models_tensors_shapes_and_types():
    cpu, gpu = configs("cpu"), configs("gpu")
    assert set(cpu) == set(gpu) == {"preprocess", "detector", "postprocess", "embedder", "region_crop",
                                    repository.DETECT_ENSEMBLE, repository.REGION_ENSEMBLE}
    for name in cpu:
        assert io_signature(cpu[name]) == io_signature(gpu[name]), name
        assert cpu[name].max_batch_size == gpu[name].max_batch_size, name
        assert cpu[name].ensemble_scheduling == gpu[name].ensemble_scheduling, name
    # only the two ONNX models change backend
    for name in ("detector", "embedder"):
        assert gpu[name].platform == "onnxruntime_onnx" and cpu[name].backend == "python"
        assert (REPO / "cpu" / name / "1" / "model.onnx").read_bytes() == \
            (REPO / "gpu" / name / "1" / "model.onnx").read_bytes()


def test_gpu_configs_use_tensorrt_fp16_with_an_engine_cache_and_warmup():
    gpu = configs("gpu")
    for name in ("detector", "embedder"):
        cfg = gpu[name]
        (trt,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
        assert trt.parameters["trt_engine_cache_enable"] == "true"
        assert trt.parameters["trt_engine_cache_path"].startswith(repository.TRT_ENGINE_CACHE)
        assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert cfg.model_warmup, name


def test_images_travel_between_steps_as_uint8():
    cfgs = configs("gpu")
    assert cfgs["detector"].input[0].data_type == mc.TYPE_UINT8
    assert cfgs["embedder"].input[0].data_type == mc.TYPE_UINT8
    for name in ("detector", "embedder"):
        model = onnx.load(str(REPO / "gpu" / name / "1" / "model.onnx"))
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_every_batching_model_has_dynamic_batching_and_room_for_all_crops():
    for variant in repository.VARIANTS:
        cfgs = configs(variant)
        for name, cfg in cfgs.items():
            if cfg.max_batch_size > 0:
                assert cfg.HasField("dynamic_batching"), (variant, name)
        params = cfgs["postprocess"].parameters
        assert cfgs["embedder"].max_batch_size >= int(params["max_objects"].string_value)


def test_ensemble_steps_reference_real_tensors():
    cfgs = configs("cpu")
    for ens in (repository.DETECT_ENSEMBLE, repository.REGION_ENSEMBLE):
        for step in cfgs[ens].ensemble_scheduling.step:
            model = cfgs[step.model_name]
            assert set(step.input_map) <= {t.name for t in model.input}, step.model_name
            assert set(step.output_map) <= {t.name for t in model.output}, step.model_name


@pytest.mark.parametrize("name", list(BUILTIN))
def test_served_manifests_record_source_licence_and_shapes(name):
    data = mf.load(BUILD / "models" / name)
    source = data["source"]
    assert source["package"] == BUILTIN[name].package and source["version"] == BUILTIN[name].version
    assert len(source["sha256"]) == 64 and data["license"] == BUILTIN[name].license
    assert data["serving"]["onnx_sha256"] == mf.sha256_file(BUILD / "models" / name / mf.MODEL_NAME)
    model = onnx.load(str(BUILD / "models" / name / mf.MODEL_NAME), load_external_data=False)
    assert [i.name for i in model.graph.input] == [data["serving"]["input"]["name"]]
    if data["role"] == "detector":
        assert len(data["classes"]) == 80 and data["classes"][0] == "person"
        assert data["serving"]["input"]["shape"] == [3, 672, 672]
        assert data["serving"]["output"]["shape"][0] == 84
    else:
        assert data["serving"]["output"]["shape"] == [{"resnet50-opennsfw": 1024, "efficientnet-lite0": 1280}[name]]


def test_a_users_own_models_plug_in_through_a_manifest(tmp_path):
    # A user's YOLO: any Ultralytics ONNX export; class names come from its metadata.
    det = tmp_path / "my-yolo"
    det.mkdir()
    shutil.copyfile(BUILD / "models" / "detector" / "model.onnx", det / "model.onnx")
    (det / "manifest.json").write_text(json.dumps({
        "role": "detector", "name": "my-yolo", "license": "AGPL-3.0",
        "input": {"name": "images"}, "output": {"name": "output0"}}))
    # A user's embedder: the raw open_nsfw graph, described by its own preprocessing.
    emb = tmp_path / "my-embedder"
    emb.mkdir()
    shutil.copyfile(BUILD / "models" / "embedder" / "model.onnx", emb / "model.onnx")
    (emb / "manifest.json").write_text(json.dumps({
        "role": "embedder", "name": "my-embedder", "license": "MIT",
        "input": {"name": "pixels", "layout": "NCHW", "color": "RGB", "size": 224},
        "output": {"name": "embedding"}}))
    cache = tmp_path / "cache"
    models = tmp_path / "models"
    for role, path in (("detector", det), ("embedder", emb)):
        shutil.copytree(resolve(str(path), role, cache), models / role)
    assert len(mf.load(models / "detector")["classes"]) == 80
    repository.build(models, tmp_path / "repo")
    cfg = repository.load_config(tmp_path / "repo" / "cpu" / "embedder" / "config.pbtxt")
    assert cfg.parameters["model_name"].string_value == "my-embedder"
    assert list(cfg.output[0].dims) == [1024]
    # prepared once, then served from the cache
    assert custom_model(det, cache) == custom_model(det, cache)


def test_a_wrong_tensor_name_in_a_manifest_is_a_clear_error(tmp_path):
    emb = tmp_path / "bad"
    emb.mkdir()
    shutil.copyfile(BUILD / "models" / "embedder" / "model.onnx", emb / "model.onnx")
    (emb / "manifest.json").write_text(json.dumps({
        "role": "embedder", "name": "bad", "license": "MIT",
        "input": {"name": "nope"}, "output": {"name": "embedding"}}))
    with pytest.raises(mf.ManifestError, match="no input named 'nope'"):
        resolve(str(emb), "embedder", tmp_path / "cache")
    with pytest.raises(mf.ManifestError, match="neither a built-in"):
        resolve(str(tmp_path / "missing"), "embedder", tmp_path / "cache")
