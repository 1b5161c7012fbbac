# Triton 2.51.0 (NGC 24.10) plus what the Python-backend models import. The same image
# serves the gpu repository (ONNX Runtime + TensorRT backends are in the NGC image) and
# the cpu repository (onnxruntime in the Python backend).
#   docker build -f deploy/docker/triton.Dockerfile -t registry.example.com/visualsearch/triton:24.10-0.1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
# requirements/triton-image.txt: resolved for the image's Python 3.10 (a test checks).
COPY requirements/triton-image.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
# The Python models (model_repository/*/1/model.py) import services.triton_models.
COPY services/__init__.py services/domain.py /opt/visualsearch/services/
COPY services/triton_models /opt/visualsearch/services/triton_models
RUN echo /opt/visualsearch > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/visualsearch.pth"
USER 1000:1000
EXPOSE 8000 8001 8002
