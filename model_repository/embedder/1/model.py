"""Used only by configs/cpu.pbtxt: serves 1/model.onnx with onnxruntime in the Python backend."""

from services.triton_models.onnx_runner import TritonPythonModel  # noqa: F401
