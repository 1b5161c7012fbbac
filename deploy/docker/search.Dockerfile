# Search service image. Build from the repository root:
#   docker build -f deploy/docker/search.Dockerfile -t registry.example.com/visualsearch/search:0.1.0 .
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY requirements/search-image.txt requirements/search-image.txt
RUN pip install --no-cache-dir --prefix=/install -r requirements/search-image.txt \
    && pip install --no-cache-dir grpcio-tools==1.81.1
COPY proto proto
RUN mkdir -p /src/build/gen \
    && python -m grpc_tools.protoc -Iproto --python_out=build/gen --grpc_python_out=build/gen \
       proto/visualsearch/v1/visual_search.proto

FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app/build/gen:/app
WORKDIR /app
COPY --from=build /install /usr/local
COPY --from=build /src/build/gen /app/build/gen
# Only the search service and its client code: tools/ and the Triton models' code stay out.
COPY services/__init__.py services/api.py services/channels.py services/paths.py services/logging_setup.py \
     services/importer.py services/catalog_upgrade.py services/milvus_access.py services/domain.py /app/services/
COPY services/search /app/services/search
USER 10001:10001
EXPOSE 50051 50052 9464
ENTRYPOINT ["python", "-m", "services.search.server"]
