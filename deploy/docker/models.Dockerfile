# The Triton model repository as an image: model_repository/ after `make models` (the configs
# from git plus the ONNX files and manifests). The Triton pod's init container copies it, so a
# fresh cluster needs no volume and a model release is an image tag (deploy/README.md).
#   make models
#   docker build -f deploy/docker/models.Dockerfile -t registry.example.com/visualsearch/models:0.1.0 .
FROM busybox:1.37.0
COPY model_repository /models
USER 1000:1000
