# Quick start:  make run   (set up everything, start Triton + search service + Milvus Lite, demo)
# Tests:        make test
SHELL := /bin/bash
PYTHON_BIN ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
export PYTHONPATH := $(CURDIR)/$(BUILD)/gen:$(CURDIR)

.PHONY: venv proto proto-check models monitoring-tools test test-unit lint run stop triton clean loadtest loadtest-payload bench bench-tls bench-write bench-scale capacity-plan eval eval-headroom

venv: $(VENV)/.installed
$(VENV)/.installed: requirements/dev.txt
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	touch $@

proto: venv $(BUILD)/gen/.stamp
$(BUILD)/gen/.stamp: $(wildcard proto/visualsearch/v1/*.proto)
	mkdir -p $(BUILD)/gen
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(BUILD)/gen --pyi_out=$(BUILD)/gen \
	  --grpc_python_out=$(BUILD)/gen --include_imports \
	  --descriptor_set_out=$(BUILD)/visualsearch.protoset proto/visualsearch/v1/*.proto
	touch $@

# buf (the @bufbuild/buf npm package): lint, and no breaking change against the last released
# API (proto/releases/, a buf image of proto/ at that release).
BUF_VERSION := 1.75.0
BUF := $(BUILD)/npm/node_modules/.bin/buf
RELEASED_API := proto/releases/visualsearch-v1-0.1.0.binpb
$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(BUILD)/npm @bufbuild/buf@$(BUF_VERSION)

proto-check: $(BUF)
	$(BUF) lint proto
	$(BUF) breaking proto --against $(RELEASED_API)

# Exports are cached in $${VS_CACHE_DIR:-~/.cache/visualsearch}; choose models with
# VS_DETECTOR=... VS_EMBEDDER=... (built-in name or a folder with model.onnx + manifest.json).
# Installs the chosen pair into model_repository/{detector,embedder} (the configs are in git).
models: venv
	$(PY) -m tools.models.build --all-builtin

triton: models
	$(PY) -m tools.stack.triton_launcher run

# Everything: unit tests (fakes, seconds) and integration tests (real tritonserver, Milvus,
# Prometheus); prints the slowest tests and the time each layer took.
test: venv proto proto-check models monitoring-tools
	$(PY) -m pytest -q --durations=15 tests

# Prometheus and promtool (Debian's package) for the monitoring tests; installed when missing
# and running as root (CI), otherwise those tests skip and say how to install them.
monitoring-tools:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else echo "note: install Prometheus (apt-get install prometheus) to run the monitoring tests"; fi; }

# The unit layer alone: no models, no servers (seconds).
test-unit: venv proto
	$(PY) -m pytest -q --durations=5 tests/unit

lint: venv
	$(PY) -m ruff check services tools tests model_repository

clean:
	rm -rf $(BUILD)

run: venv proto models
	$(PY) -m tools.stack.demo

stop: venv
	$(PY) -m tools.stack.demo --stop

LOADTEST_ARGS ?= --start-stack $(BUILD)/loadtest/stack --concurrency 4 --duration 30s
loadtest-payload: venv proto
	$(PY) -m tools.loadtest.run --write-payload $(BUILD)/loadtest/search_request.bin

loadtest: venv proto models
	$(PY) -m tools.loadtest.run $(LOADTEST_ARGS) --json $(BUILD)/loadtest/report.json --plots $(BUILD)/loadtest

bench: venv proto models
	$(PY) -m tools.bench.pipeline

# The catalog write path against the real Milvus server, next to its raw insert rate
# (docs/benchmarks-write.md).
bench-write: venv proto
	$(PY) -m tools.bench.write

# Index types at one size on the real Milvus server (docs/benchmarks-scale.md, docs/scale/<run>.json);
# about 20 minutes on 2 cores at a million 1280-d vectors (HNSW). SCALE_ARGS, e.g.
# --vectors 3000000 --dimension 256 --segment-max-mb 2048 --index-types HNSW,IVF_SQ8.
SCALE_ARGS ?= --vectors 1000000 --segment-max-mb 2048 --index-types HNSW --build-timeout-s 3600
bench-scale: venv proto models
	$(PY) -m tools.bench.scale $(SCALE_ARGS)
	$(PY) -m tools.bench.scale --report

# docs/capacity-plan.md from every run in docs/scale/ (seconds; no servers).
capacity-plan: venv
	$(PY) -m tools.bench.capacity

# What TLS and mutual TLS cost SearchByImage (docs/benchmarks-tls.md).
bench-tls: venv proto models
	$(PY) -m tools.bench.tls

# Search quality through the real stack, per query kind and variant (docs/evaluation.md;
# about an hour on 2 CPU cores). EVAL_ARGS="--products 40 --variants shipped" for a quick look.
EVAL_ARGS ?=
eval: venv proto models
	$(PY) -m tools.eval.run $(EVAL_ARGS)

# What the scene queries could still gain with the shipped models (how much the detector's box
# choice caps the object's group, and query- and catalog-side additions, replayed in-process;
# docs/evaluation-headroom.md; about 15 minutes on 2 CPU cores).
eval-headroom: venv proto models
	$(PY) -m tools.eval.headroom
