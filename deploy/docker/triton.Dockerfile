# Triton 2.51.0 (NGC 24.10) plus what the Python-backend models import. The same image
# serves the gpu repository (ONNX Runtime + TensorRT backends are in the NGC image) and
# the cpu repository (onnxruntime in the Python backend).
#   docker build -f deploy/docker/triton.Dockerfile -t registry.example.com/visualsearch/triton:24.10-0.1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
# numpy < 2: with numpy 2 the Python backend silently returns empty tensors.
RUN pip install --no-cache-dir numpy==1.26.4 pillow==13.0.0 pillow-heif==1.8.1 onnxruntime==1.20.1
# The Python models (model_repository/*/1/model.py) import services.triton_models.
COPY services/__init__.py services/domain.py /opt/visualsearch/services/
COPY services/triton_models /opt/visualsearch/services/triton_models
RUN echo /opt/visualsearch > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/visualsearch.pth"
USER 1000:1000
EXPOSE 8000 8001 8002
