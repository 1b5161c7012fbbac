"""model_repository/ as Triton loads it (both variants) and the model manifests (no server)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from services.search import triton_client as tc
from tests.conftest import BUILD
from tools.models import crop_graph, repository
from tools.models import manifest as mf
from tools.models.build import BUILTIN, custom_model, resolve

PIPELINE_MODELS = {"preprocess", "detector", "postprocess", "crops", "embedder", "pool_views", "region_crop",
                   "model_info", tc.DETECT_ENSEMBLE, tc.REGION_ENSEMBLE}


def io_signature(cfg):
    return ([(t.name, t.data_type, list(t.dims)) for t in cfg.input],
            [(t.name, t.data_type, list(t.dims)) for t in cfg.output])


def test_cpu_and_gpu_variants_agree_on_models_tensors_shapes_and_types():
    cpu, gpu = repository.configs("cpu"), repository.configs("gpu")
    assert set(cpu) == set(gpu) == PIPELINE_MODELS
    for name in cpu:
        assert cpu[name].name == gpu[name].name == name
        assert io_signature(cpu[name]) == io_signature(gpu[name]), name
        assert cpu[name].max_batch_size == gpu[name].max_batch_size, name
        assert cpu[name].dynamic_batching == gpu[name].dynamic_batching, name
        assert cpu[name].ensemble_scheduling == gpu[name].ensemble_scheduling, name
    # only the models that ONNX Runtime serves on a GPU have a CPU config, and only their backend differs
    assert sorted(p.parent.parent.name for p in repository.REPOSITORY.glob("*/configs/cpu.pbtxt")) == \
        sorted(repository.ONNX_MODELS + (repository.CROPS,))
    for name in repository.ONNX_MODELS + (repository.CROPS,):
        assert gpu[name].platform == "onnxruntime_onnx" and cpu[name].backend == "python"
        assert gpu[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert cpu[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_gpu_configs_use_tensorrt_fp16_with_an_engine_cache_and_warmup():
    gpu = repository.configs("gpu")
    for name in repository.ONNX_MODELS:
        cfg = gpu[name]
        (trt,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
        assert trt.parameters["trt_engine_cache_enable"] == "true"
        assert trt.parameters["trt_engine_cache_path"] == f"/trt-cache/{name}"
        assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        # warm-up runs the installed model's real input shape, at batch 1 and at the largest batch
        onnx_file, manifest = repository.installed(name)
        shape = manifest["serving"]["input"]["shape"]
        for warmup in cfg.model_warmup:
            assert list(warmup.inputs[cfg.input[0].name].dims) == shape
        assert {w.batch_size for w in cfg.model_warmup} == {1, cfg.max_batch_size}
        # one TensorRT profile covers every batch the dynamic batcher forms: no engine build under traffic
        tensor = cfg.input[0].name
        dims = "x".join(str(d) for d in shape)
        assert trt.parameters["trt_profile_min_shapes"] == f"{tensor}:1x{dims}"
        assert trt.parameters["trt_profile_max_shapes"] == f"{tensor}:{cfg.max_batch_size}x{dims}"
        opt = int(trt.parameters["trt_profile_opt_shapes"].split(":")[1].split("x")[0])
        assert trt.parameters["trt_profile_opt_shapes"] == f"{tensor}:{opt}x{dims}" and 1 <= opt <= cfg.max_batch_size


# The TensorRT accelerator parameters the ONNX Runtime backend of Triton 24.10 accepts (its
# src/onnxruntime.cc at branch r24.10; an unknown key fails the model's load).
ORT_BACKEND_24_10_TRT_PARAMETERS = {
    "precision_mode", "max_workspace_size_bytes", "do_copy_in_default_stream", "use_ep_level_unified_stream",
    "trt_auxiliary_streams", "trt_build_heuristics_enable", "trt_builder_optimization_level",
    "trt_context_memory_sharing_enable", "trt_cuda_graph_enable", "trt_detailed_build_log", "trt_dla_core",
    "trt_dla_enable", "trt_dump_ep_context_model", "trt_dump_subgraphs", "trt_engine_cache_enable",
    "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_ep_context_embed_mode", "trt_ep_context_file_path",
    "trt_extra_plugin_lib_paths", "trt_force_sequential_engine_build", "trt_force_timing_cache",
    "trt_max_partition_iterations", "trt_min_subgraph_size", "trt_profile_max_shapes", "trt_profile_min_shapes",
    "trt_profile_opt_shapes", "trt_sparsity_enable", "trt_tactic_sources", "trt_timing_cache_enable",
    "trt_timing_cache_path"}


def test_gpu_configs_use_only_tensorrt_options_the_triton_24_10_backend_knows():
    gpu = repository.configs("gpu")
    for name in repository.ONNX_MODELS:
        for accelerator in gpu[name].optimization.execution_accelerators.gpu_execution_accelerator:
            unknown = set(accelerator.parameters) - ORT_BACKEND_24_10_TRT_PARAMETERS
            assert not unknown, f"{name}: Triton 24.10's ONNX Runtime backend refuses {sorted(unknown)}"


def test_images_travel_between_steps_as_uint8():
    for variant in repository.VARIANTS:
        cfgs = repository.configs(variant)
        for name in repository.ONNX_MODELS:
            assert cfgs[name].input[0].data_type == mc.TYPE_UINT8
    for name in repository.ONNX_MODELS:
        model = onnx.load(str(repository.installed(name)[0]))
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_every_batching_model_has_dynamic_batching_and_room_for_all_crops():
    for variant in repository.VARIANTS:
        cfgs = repository.configs(variant)
        for name, cfg in cfgs.items():
            if cfg.max_batch_size > 0:
                assert cfg.HasField("dynamic_batching"), (variant, name)
        max_objects = int(repository.parameter(cfgs["postprocess"], "max_objects"))
        views = int(repository.parameter(cfgs["postprocess"], "whole_image_views"))
        assert cfgs["embedder"].max_batch_size >= max_objects + views  # every object and the whole image's views


def test_ensemble_steps_reference_real_tensors_and_the_client_contract():
    cfgs = repository.configs("cpu")
    for ens in (tc.DETECT_ENSEMBLE, tc.REGION_ENSEMBLE):
        for step in cfgs[ens].ensemble_scheduling.step:
            model = cfgs[step.model_name]
            assert set(step.input_map) <= {t.name for t in model.input}, step.model_name
            assert set(step.output_map) <= {t.name for t in model.output}, step.model_name
    assert [t.name for t in cfgs[tc.DETECT_ENSEMBLE].output] == list(tc.DETECT_OUTPUTS)
    assert [t.name for t in cfgs[tc.REGION_ENSEMBLE].output] == list(tc.REGION_OUTPUTS)
    assert [t.name for t in cfgs[tc.REGION_ENSEMBLE].input] == [tc.IMAGE, tc.REGION]


def test_installed_models_match_the_configs_tensor_names():
    cfgs = repository.configs("gpu")
    for name in repository.ONNX_MODELS:
        onnx_file, manifest = repository.installed(name)
        assert manifest["serving"]["onnx_sha256"] == mf.sha256_file(onnx_file)
        model = onnx.load(str(onnx_file), load_external_data=False)
        assert [i.name for i in model.graph.input] == [cfgs[name].input[0].name]
        assert [o.name for o in model.graph.output] == [cfgs[name].output[0].name]


def test_the_installed_crop_graph_is_the_crops_configs_model_for_the_embedders_side():
    cfg = repository.configs("gpu")[repository.CROPS]
    model = onnx.load(str(repository.REPOSITORY / repository.CROPS / "1" / mf.MODEL_NAME))
    onnx.checker.check_model(model, full_check=True)
    # Triton 24.10's ONNX Runtime (1.19) reads IR version <= 10 and opsets <= 21
    assert model.ir_version <= 10 and max(o.version for o in model.opset_import) <= 21
    elem = {onnx.TensorProto.UINT8: mc.TYPE_UINT8, onnx.TensorProto.FLOAT: mc.TYPE_FP32,
            onnx.TensorProto.INT64: mc.TYPE_INT64}
    for tensors, declared in ((model.graph.input, cfg.input), (model.graph.output, cfg.output)):
        assert [t.name for t in tensors] == [t.name for t in declared]
        assert [elem[t.type.tensor_type.elem_type] for t in tensors] == [t.data_type for t in declared]
        for tensor, config in zip(tensors, declared, strict=True):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.type.tensor_type.shape.dim]
            assert len(dims) == len(config.dims), tensor.name
            assert all(c in (-1, d) for d, c in zip(dims, config.dims, strict=True)), tensor.name
    # no TensorRT: an engine per picture size would be built under live traffic
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    side = repository.installed("embedder")[1]["serving"]["input"]["shape"][1]
    crops = crop_graph.CropGraph(model).crops(np.zeros((40, 60, 3), np.uint8), np.zeros((0, 4), np.float32), 1)
    assert crops.shape == (1, 3, side, side)


@pytest.mark.parametrize("name", list(BUILTIN))
def test_served_manifests_record_source_licence_and_shapes(name):
    data = mf.load(BUILD / "models" / name)
    source = data["source"]
    assert source["package"] == BUILTIN[name].package and source["version"] == BUILTIN[name].version
    assert len(source["sha256"]) == 64 and data["license"] == BUILTIN[name].license
    assert data["serving"]["onnx_sha256"] == mf.sha256_file(BUILD / "models" / name / mf.MODEL_NAME)
    model = onnx.load(str(BUILD / "models" / name / mf.MODEL_NAME), load_external_data=False)
    if data.get("rewrite", True):
        assert [i.name for i in model.graph.input] == [data["serving"]["input"]["name"]]
    else:  # served as published: the very file of the package, fed by the CPU model's adapter
        assert data["serving"]["onnx_sha256"] == source["sha256"]
        assert [i.name for i in model.graph.input] == [data["serving"]["model_input"]["name"]]
        assert "int8" not in data["serving"] and not (BUILD / "models" / name / repository.INT8_NAME).exists()
    if data["role"] == "detector":
        assert len(data["classes"]) == 80 and data["classes"][0] == "person"
        side = BUILTIN[name].image_size  # the shipped export (make eval compared 480 and 576)
        assert data["serving"]["input"]["shape"] == [3, side, side]
        assert data["serving"]["output"]["shape"][0] == 84
    else:
        full = {"resnet50-opennsfw": 1024, "efficientnet-lite0": 1280, "sscd": 512}[name]
        assert data["serving"]["output"]["shape"] == [BUILTIN[name].dimension or full]
        assert data.get("pooling", "avg") == (BUILTIN[name].pooling if data.get("rewrite", True) else "avg")
        if BUILTIN[name].dimension:
            assert data["projection"]["from_dimension"] == full
            reference = data["projection"]["reference"]
            if BUILTIN[name].projection == "learned":  # pairs: a covariance of their differences, shrunk
                assert data["projection"]["method"] == "learned-whitening"
                assert reference["pairs"] >= 2 * BUILTIN[name].dimension
                assert reference["kinds"] == ["regions", "cut-outs"]
            else:
                assert data["projection"]["method"] == BUILTIN[name].projection
                assert reference["crops"] >= 10 * BUILTIN[name].dimension


def test_a_users_own_models_plug_in_through_a_manifest(tmp_path):
    detector_onnx, _ = repository.installed("detector")
    embedder_onnx, _ = repository.installed("embedder")
    # A user's YOLO with its own tensor names; class names come from its metadata.
    det = tmp_path / "my-yolo"
    det.mkdir()
    renamed = onnx.load(str(detector_onnx))
    for vi in [*renamed.graph.input, *renamed.graph.output]:
        old = vi.name
        vi.name = {"images": "input_0", "output0": "preds"}[old]
        for node in renamed.graph.node:
            node.input[:] = [vi.name if n == old else n for n in node.input]
            node.output[:] = [vi.name if n == old else n for n in node.output]
    onnx.save(renamed, str(det / "model.onnx"))
    (det / "manifest.json").write_text(json.dumps({
        "role": "detector", "name": "my-yolo", "license": "AGPL-3.0",
        "input": {"name": "input_0"}, "output": {"name": "preds"}}))
    # A user's embedder: the served default embedder's graph, described by its own preprocessing.
    emb = tmp_path / "my-embedder"
    emb.mkdir()
    shutil.copyfile(embedder_onnx, emb / "model.onnx")
    (emb / "manifest.json").write_text(json.dumps({
        "role": "embedder", "name": "my-embedder", "license": "MIT",
        "input": {"name": "pixels", "layout": "NCHW", "color": "RGB", "size": 224},
        "output": {"name": "embedding"}}))
    cache = tmp_path / "cache"
    repo = tmp_path / "repo"
    shutil.copytree(repository.REPOSITORY, repo, ignore=shutil.ignore_patterns("*.onnx", "manifest.json"))
    for role, path in (("detector", det), ("embedder", emb)):
        repository.install(role, resolve(str(path), role, cache), repo)
    _, detector = repository.installed("detector", repo)
    assert len(detector["classes"]) == 80 and detector["name"] == "my-yolo"
    assert detector["serving"]["input"]["name"] == "images"  # renamed to what the config declares
    _, embedder = repository.installed("embedder", repo)
    assert embedder["name"] == "my-embedder"
    assert embedder["serving"]["output"]["shape"] == repository.installed("embedder")[1]["serving"]["output"]["shape"]
    # prepared once, then served from the cache
    assert custom_model(det, cache) == custom_model(det, cache)


def test_a_wrong_tensor_name_in_a_manifest_is_a_clear_error(tmp_path):
    emb = tmp_path / "bad"
    emb.mkdir()
    shutil.copyfile(repository.installed("embedder")[0], emb / "model.onnx")
    (emb / "manifest.json").write_text(json.dumps({
        "role": "embedder", "name": "bad", "license": "MIT",
        "input": {"name": "nope"}, "output": {"name": "embedding"}}))
    with pytest.raises(mf.ManifestError, match="no input named 'nope'"):
        resolve(str(emb), "embedder", tmp_path / "cache")
    with pytest.raises(mf.ManifestError, match="neither a built-in"):
        resolve(str(tmp_path / "missing"), "embedder", tmp_path / "cache")


def test_installing_a_model_in_the_wrong_role_is_refused(tmp_path):
    with pytest.raises(mf.ManifestError, match="not a detector"):
        repository.install("detector", BUILD / "models" / "resnet50-opennsfw", tmp_path)


def test_learned_whitening_tells_two_shots_of_one_thing_from_other_things(tmp_path):
    """The shipped EfficientNet-Lite0 (learned whitening at 1280-d) and VS_EMBEDDING_DIMENSION=256
    against the raw features, on pairs made of photos outside the reference set."""
    import numpy as np
    from PIL import Image

    from tools.cache import default_cache
    from tools.models import build, whitening
    from tools.sample_photos import load_photos

    shipped = BUILD / "models" / "efficientnet-lite0"
    short = build.builtin_model("efficientnet-lite0", default_cache(), dimension=256)
    raw = build.builtin_model("efficientnet-lite0", default_cache(), dimension=0)
    for served, dimension in ((shipped, 1280), (short, 256)):
        manifest = mf.load(served)
        assert manifest["serving"]["output"]["shape"] == [dimension]
        assert manifest["projection"]["method"] == "learned-whitening"
    assert "projection" not in mf.load(raw)
    # pairs of both kinds the fit uses, from scikit-image's photos (not the mate-backgrounds ones);
    # 360 of them: with 60 the three models differed by a pair or two, within chance
    paths = []
    for name in ("coffee", "astronaut", "rocket"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(load_photos()[name].pixels).save(paths[-1])
    anchors, positives = whitening.training_pairs(paths, 224, regions_per_photo=60, cutouts_per_photo=60, seed=99)

    def matched(served: Path) -> float:
        a, p = whitening.embed(served / mf.MODEL_NAME, anchors), whitening.embed(served / mf.MODEL_NAME, positives)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4)
        return float((np.argmax(p @ a.T, 1) == np.arange(len(a))).mean())

    # what the whitening is for: a shopper's shot finds its catalog-like twin more often than
    # with the raw features
    figures = {"shipped": matched(shipped), "256": matched(short), "raw": matched(raw)}
    assert figures["shipped"] > figures["raw"] and figures["256"] > figures["raw"], figures


def test_the_served_detector_head_answers_as_the_exported_one_on_real_photos():
    """tools/models/detector_head.py's rewrite of the built-in detector against the same export
    with its head as Ultralytics writes it, on real photos: the float files give the same class
    scores and boxes to float rounding; the INT8 files quantize every tensor alike, and differ
    only where the exported head read the class embeddings through the INT8 graph's quantized
    copy (the rewrite folds the float ones into its convolution)."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from services.triton_models import imaging
    from tools.cache import default_cache
    from tools.models import build, quantize
    from tools.sample_photos import load_photos

    served = BUILD / "models" / build.DEFAULT_DETECTOR
    exported = build.builtin_model(build.DEFAULT_DETECTOR, default_cache(), fused_head=False)
    build.ensure_int8(exported, default_cache())
    graphs = {(folder, name): onnx.load(str(folder / name)).graph
              for folder in (served, exported) for name in (mf.MODEL_NAME, quantize.INT8_NAME)}
    for name in (mf.MODEL_NAME, quantize.INT8_NAME):
        rewritten = [{n.name.split("_")[1] for n in graphs[folder, name].node
                      if n.name.startswith(("vs_head", "vs_dfl"))} for folder in (served, exported)]
        # YOLO-World's three contrastive heads (one per scale) and its one DFL decoder
        assert rewritten == [{"head0", "head1", "head2", "dfl0"}, set()], rewritten
        # each head reads its 128-channel map: the 128 -> 512 projection folded in
        assert sorted(n.name for n in graphs[served, name].node if n.name.endswith("_RConv")) == \
            ["vs_head0_RConv", "vs_head1_RConv", "vs_head2_RConv"]

    def quantized(graph: onnx.GraphProto) -> dict[str, tuple]:
        values = {i.name: numpy_helper.to_array(i).tolist() for i in graph.initializer}
        return {n.input[0]: (values[n.input[1]], values[n.input[2]]) for n in graph.node
                if n.op_type == "QuantizeLinear"}

    assert quantized(graphs[served, quantize.INT8_NAME]) == quantized(graphs[exported, quantize.INT8_NAME])
    side = mf.load(served)["serving"]["input"]["shape"][-1]
    photos = [imaging.letterbox(p.pixels, side)[0][None] for p in load_photos().values()][:6]
    for name, score_tolerance in ((mf.MODEL_NAME, 1e-4), (quantize.INT8_NAME, 0.05)):
        new, old = (ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
                    for folder in (served, exported))
        best = 0.0
        for photo in photos:
            got, want = (s.run(None, {"images": photo})[0] for s in (new, old))
            np.testing.assert_allclose(got[:, 4:], want[:, 4:], atol=score_tolerance)  # class scores, 0..1
            np.testing.assert_allclose(got[:, :4], want[:, :4], atol=0.01)  # boxes, letterbox px
            best = max(best, float(want[:, 4:].max()))
        assert best > 0.5  # confident detections were compared, not only empty score maps


def test_two_exports_of_the_same_weights_serve_the_same_bytes(tmp_path):
    """The served sha256 names the catalog's collection and every image's content key: an
    export's timestamp (Ultralytics' 'date' metadata) must not reach the served file."""
    from tools.models import prepare

    detector_onnx, manifest = repository.installed("detector")
    assert "date" not in {p.key for p in onnx.load(str(detector_onnx)).metadata_props}
    shas = []
    for i, date in enumerate(("2026-12-07T05:38:12+00:00", "2026-12-07T05:44:23+00:00")):
        raw = tmp_path / f"raw{i}"
        raw.mkdir()
        model = onnx.load(str(detector_onnx))
        model.metadata_props.add(key="date", value=date)
        onnx.save(model, str(raw / mf.MODEL_NAME))
        (raw / mf.MANIFEST_NAME).write_text(json.dumps({
            "role": "detector", "name": "yolo", "license": "AGPL-3.0", "classes": manifest["classes"],
            "input": {"name": "images"}, "output": {"name": "output0"}}))
        shas.append(prepare.prepare(raw, tmp_path / f"served{i}")["serving"]["onnx_sha256"])
    assert shas[0] == shas[1]
