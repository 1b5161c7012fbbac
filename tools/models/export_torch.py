"""Export the built-in PyTorch checkpoints to raw ONNX models (run in the export venv).

Only this module imports torch/ultralytics; it is run by ``tools.models.build`` with the
export-only interpreter, never by the service.  Output: a folder with ``model.onnx`` and a
raw manifest that ``tools.models.prepare`` turns into the served model.

Usage: python -m tools.models.export_torch yolo WEIGHTS OUT_DIR IMAGE_SIZE
       python -m tools.models.export_torch efficientnet WEIGHTS OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

YOLO_IMAGE_SIZES = (480, 576, 640, 672)  # sides whose export `make eval` and `make bench` compare
EFFNET_IMAGE_SIZE = 224


def export_yolo(weights: Path, out_dir: Path, image_size: int) -> None:
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.modules.block import ImagePoolingAttn

    class AdaptiveMaxPool(torch.nn.Module):
        """``nn.AdaptiveMaxPool2d((k, k))`` as slices with the same windows (floor(i*n/k) to
        ceil((i+1)*n/k)) and values: the exporter writes the original as a MaxPool, which it can
        only do where k divides the feature maps' sides, so YOLO-World exported at 672 but not at
        its native 640 (a 20x20 map at stride 32)."""

        def __init__(self, k: int) -> None:
            super().__init__()
            self.k = k

        def _pool(self, x: torch.Tensor, dim: int) -> torch.Tensor:
            n, k = x.shape[dim], self.k
            return torch.cat([x.narrow(dim, (i * n) // k, ((i + 1) * n + k - 1) // k - (i * n) // k)
                              .amax(dim, keepdim=True) for i in range(k)], dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._pool(self._pool(x, 2), 3)

    original_export = torch.onnx.export

    def batch_only_dynamic(*args, **kwargs):
        # Ultralytics' dynamic=True also frees H and W; a dynamic batch is all Triton needs, and
        # YOLO-World answers worse on the rectangular inputs that free H and W would allow
        # (docs/models.md).
        if kwargs.get("dynamic_axes"):
            kwargs["dynamic_axes"] = {name: {0: "batch"} for name in kwargs["dynamic_axes"]}
        return original_export(*args, **kwargs)

    torch.onnx.export = batch_only_dynamic
    try:
        model = YOLO(str(weights))
        stride = int(model.model.stride.max())  # the coarsest feature map's, which k must divide
        for module in model.model.modules():
            # only where the MaxPool cannot be written: the other sides keep the bytes they had
            if isinstance(module, ImagePoolingAttn) and image_size % (stride * module.k):
                module.im_pools = torch.nn.ModuleList(AdaptiveMaxPool(module.k) for _ in module.im_pools)
        exported = Path(model.export(format="onnx", imgsz=image_size, opset=17,
                                     simplify=False, dynamic=True, batch=2))
    finally:
        torch.onnx.export = original_export
    exported.replace(out_dir / "model.onnx")
    raw = {"role": "detector", "name": "yolov8s-world", "license": "AGPL-3.0",
           "input": {"name": "images"}, "output": {"name": "output0"},
           "classes": [model.names[i] for i in sorted(model.names)]}
    (out_dir / "manifest.json").write_text(json.dumps(raw, indent=2))


def export_efficientnet(weights: Path, out_dir: Path) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    # never call set_swish(): it swaps the activation the weights were trained with and silently
    # ruins the pooled features
    net.eval()

    class PooledFeatures(torch.nn.Module):
        def __init__(self, backbone: torch.nn.Module) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone._avg_pooling(self.backbone.extract_features(x)).flatten(1)

    sample = torch.zeros(2, 3, EFFNET_IMAGE_SIZE, EFFNET_IMAGE_SIZE)
    torch.onnx.export(PooledFeatures(net), sample, str(out_dir / "model.onnx"), opset_version=17,
                      input_names=["input"], output_names=["features"],
                      dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}}, dynamo=False)
    raw = {"role": "embedder", "name": "efficientnet-lite0", "license": "Apache-2.0",
           "input": {"name": "input", "layout": "NCHW", "color": "RGB", "size": EFFNET_IMAGE_SIZE,
                     "mean": [127, 127, 127], "std": [128, 128, 128]},
           "output": {"name": "features"}}
    (out_dir / "manifest.json").write_text(json.dumps(raw, indent=2))


def main(argv: list[str]) -> int:
    # the shipped side is tools.models.build's (BUILTIN[...].image_size): no default here
    sizes = [str(s) for s in YOLO_IMAGE_SIZES]
    yolo = len(argv) == 4 and argv[0] == "yolo" and argv[3] in sizes
    if not (yolo or (len(argv) == 3 and argv[0] == "efficientnet")):
        print(__doc__ + f"IMAGE_SIZE: one of {', '.join(sizes)}", file=sys.stderr)
        return 2
    weights, out_dir = Path(argv[1]), Path(argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    if yolo:
        export_yolo(weights, out_dir, int(argv[3]))
    else:
        export_efficientnet(weights, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
