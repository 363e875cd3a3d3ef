# ClusterFormer entry points. The two commands of the README quick start are `make run` and
# `make test`; each creates what it needs first. Everything else here is a building block.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
MODERN_VENV ?= .venv-modern
PY := $(VENV)/bin/python
MODERN_PY := $(MODERN_VENV)/bin/python
# The CUDA kernels are compiled (not run) in the modern environment; Hopper is the lent GPU.
CUDA_ARCHS ?= 9.0
RUN_CONFIG ?= configs/shapes/panoptic-segmentation/clusterformer_nano.yaml
RUN_OUTPUT ?= output/shapes_panoptic
# `make run` trains in two processes of one thread each on 2 cores (gloo, batch 4 each, the same
# total batch): 0.81x the time per iteration of one process on two threads (docs/benchmarks.md).
RUN_PROCESSES ?= 2
REFERENCE_MODEL_CONFIG ?= configs/shapes/panoptic-segmentation/clusterformer_nano_reference.yaml
REFERENCE_MODEL_OUTPUT ?= output/shapes_panoptic_reference
REFERENCE_MODEL_WEIGHTS ?= checkpoints/shapes/clusterformer_nano_shapes_panoptic.pth
CONVERGENCE_CONFIG ?= configs/shapes/panoptic-segmentation/clusterformer_nano_convergence.yaml
PYTEST_ARGS ?=

export PYTHONDONTWRITEBYTECODE := 1
export MPLBACKEND := Agg

.PHONY: help env env-modern build build-modern run test test-reference test-modern reference-model decoder-convergence lint format clean

help:
	@echo "make run    - set up .venv if missing, train + evaluate the shapes model, write output/"
	@echo "make test   - set up both environments if missing, run the whole test suite"
	@echo "make lint   - ruff check + format check"
	@echo "make reference-model - train (resumably) and publish the reference shapes model (~80 min)"
	@echo "make decoder-convergence SEED=n - the 10000-iteration recipe with both decoders, one seed, compared (~2 h)"

# ---- environments -------------------------------------------------------------------------
# An environment is (re)created when it is missing or its requirements file's content changed:
# the ready-marker stores the file's hash (not its date, so a checkout that touches the file
# does not cost a rebuild). Only a folder this Makefile created is ever deleted: it writes
# .created-by-makefile right after `python -m venv` (so a half-built one can be redone), and a
# VENV / MODERN_VENV that exists without that marker or a ready-marker (your own environment, or
# any other folder) is refused with a message instead of `rm -rf`.
REF_HASH = $(shell sha256sum requirements/reference.txt | cut -c1-16)
MODERN_HASH = $(shell sha256sum requirements/modern.txt | cut -c1-16)
CREATED_MARKER := .created-by-makefile

# $(call refuse_foreign,folder,ready-marker,variable): fail unless the folder is absent or ours.
define refuse_foreign
if [ -e "$(1)" ] && [ ! -f "$(1)/$(CREATED_MARKER)" ] && [ ! -f "$(1)/$(2)" ]; then \
  echo "error: $(1) exists but was not created by this Makefile (no $(1)/$(CREATED_MARKER))," \
    "so it is not deleted or changed. Delete it yourself to have it created here, or pass" \
    "another folder: make $(MAKECMDGOALS) $(3)=<new folder>" >&2; \
  exit 1; \
fi
endef

env:
	@if [ "$$(cat $(VENV)/.reference-ready 2>/dev/null)" != "$(REF_HASH)" ]; then \
	  $(call refuse_foreign,$(VENV),.reference-ready,VENV); \
	  python=$$(tools/find_python.sh 3.10) || exit 1; \
	  echo "==> creating the reference environment in $(VENV) (Python 3.10, torch 2.3.1, detectron2)"; \
	  rm -rf $(VENV) && \
	  "$$python" -m venv $(VENV) && \
	  touch $(VENV)/$(CREATED_MARKER) && \
	  $(PY) -m pip install -q --upgrade "pip<25" "setuptools<70" wheel && \
	  $(PY) -m pip install -q -r requirements/reference.txt && \
	  echo "$(REF_HASH)" > $(VENV)/.reference-ready; \
	fi

env-modern:
	@if [ "$$(cat $(MODERN_VENV)/.modern-ready 2>/dev/null)" != "$(MODERN_HASH)" ]; then \
	  $(call refuse_foreign,$(MODERN_VENV),.modern-ready,MODERN_VENV); \
	  python=$$(tools/find_python.sh 3.11 2>/dev/null || tools/find_python.sh 3.12) || exit 1; \
	  echo "==> creating the modern environment in $(MODERN_VENV) (Python 3.11+, torch from PyPI, no detectron2)"; \
	  rm -rf $(MODERN_VENV) && \
	  "$$python" -m venv $(MODERN_VENV) && \
	  touch $(MODERN_VENV)/$(CREATED_MARKER) && \
	  $(MODERN_PY) -m pip install -q --upgrade pip setuptools wheel && \
	  $(MODERN_PY) -m pip install -q -r requirements/modern.txt && \
	  echo "$(MODERN_HASH)" > $(MODERN_VENV)/.modern-ready; \
	fi

# Editable install; builds the C++ (CPU) op against the reference torch. Re-run on every call so
# edited kernels are recompiled (ninja makes an up-to-date build a no-op). setup.py would install
# without the op if it failed to compile (users then get the PyTorch fallback);
# CLUSTERFORMER_REQUIRE_EXT=1 makes that an error here, so a C++ compile error fails CI.
build: env
	CLUSTERFORMER_REQUIRE_EXT=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .

# The modern build compiles the CUDA kernels with the machine's nvcc even without a GPU, so a
# CUDA compile error fails `make test` (FORCE_CUDA=1 also makes a failed build an error).
build-modern: env-modern
	FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" $(MODERN_PY) setup.py -q build_ext --inplace

# ---- the two README commands --------------------------------------------------------------
# Train + evaluate (Detectron2's evaluators), draw predictions and cluster maps for 8 val images
# with the demo and the training curves (losses, lr, metrics) from metrics.json, then print the
# metrics and where everything is.
run: build
	$(PY) train_net.py --config-file $(RUN_CONFIG) --num-gpus $(RUN_PROCESSES) \
	  OUTPUT_DIR $(RUN_OUTPUT) MODEL.DEVICE cpu
	$(PY) demo/demo.py --config-file $(RUN_CONFIG) --show-clusters \
	  --input "$${DETECTRON2_DATASETS:-datasets}/shapes/val/00000100000[1-8].png" \
	  --output $(RUN_OUTPUT)/visualizations --opts MODEL.WEIGHTS $(RUN_OUTPUT)/model_final.pth
	$(PY) tools/plot_training.py $(RUN_OUTPUT)/metrics.json --output $(RUN_OUTPUT)/plots
	$(PY) tools/summarize_run.py $(RUN_OUTPUT)

test: test-reference test-modern

# The published reference model (checkpoints/shapes/clusterformer_nano_shapes_panoptic.pth): the
# `make run` recipe, in the same two processes, for 12000 iterations (about 80 min on 2 cores).
# Resumable: run it again after an interruption and it continues from its last checkpoint. Its
# weights are then kept in float16 and re-evaluated; docs/experiments/shapes_reference.md reports
# both (and the curves).
reference-model: build
	$(PY) train_net.py --config-file $(REFERENCE_MODEL_CONFIG) --num-gpus $(RUN_PROCESSES) --resume \
	  OUTPUT_DIR $(REFERENCE_MODEL_OUTPUT) MODEL.DEVICE cpu
	$(PY) tools/extract_backbone.py --all --dtype float16 \
	  $(REFERENCE_MODEL_OUTPUT)/model_final.pth $(REFERENCE_MODEL_WEIGHTS)
	$(PY) train_net.py --config-file $(REFERENCE_MODEL_CONFIG) --eval-only \
	  OUTPUT_DIR $(REFERENCE_MODEL_OUTPUT)/published MODEL.WEIGHTS $(REFERENCE_MODEL_WEIGHTS) \
	  MODEL.DEVICE cpu
	$(PY) tools/experiments/shapes_reference.py $(REFERENCE_MODEL_OUTPUT) \
	  --weights $(REFERENCE_MODEL_WEIGHTS)

# The `make run` recipe for 10000 iterations (CONVERGENCE_CONFIG) with each decoder, one process of
# one thread each side by side (resumable), for one seed (SEED=0, 1, 2, ...), compared at every
# evaluation; the report is the mean over every seed recorded so far:
# docs/experiments/shapes_decoder_convergence.md.
SEED ?= 0
CONVERGENCE_OUTPUT = output/shapes_decoder_convergence/seed$(SEED)
decoder-convergence: build
	OMP_NUM_THREADS=1 $(PY) train_net.py --config-file $(CONVERGENCE_CONFIG) --num-gpus 1 \
	  --resume OUTPUT_DIR $(CONVERGENCE_OUTPUT)/clustering MODEL.DEVICE cpu SEED $(SEED) \
	  & clustering=$$!; \
	OMP_NUM_THREADS=1 $(PY) train_net.py --config-file $(CONVERGENCE_CONFIG) --num-gpus 1 \
	  --resume OUTPUT_DIR $(CONVERGENCE_OUTPUT)/masked_attention MODEL.DEVICE cpu SEED $(SEED) \
	  MODEL.CLUSTER_DECODER.CROSS_ATTENTION masked_attention & masked=$$!; \
	wait $$clustering && wait $$masked
	$(PY) tools/experiments/shapes_decoder_convergence.py $(CONVERGENCE_OUTPUT)/clustering \
	  $(CONVERGENCE_OUTPUT)/masked_attention

# One intra-op thread per test process (unless OMP_NUM_THREADS is set): the tests' tensors are
# small, several tests start training subprocesses, and on a 2-core machine more threads than
# cores made the suite several times slower (measured: 4 min with 1 thread under load).
TEST_THREADS := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}

test-reference: build
	$(TEST_THREADS) $(PY) -m pytest tests $(PYTEST_ARGS)

# Every test that runs without detectron2 (tests/conftest.py's NEEDS_DETECTRON2 names the others,
# which this environment does not collect). Both builds live in clusterformer/ side by side: the
# extension's file name carries the interpreter's ABI tag (cpython-310 / cpython-31x).
test-modern: build-modern
	$(TEST_THREADS) $(MODERN_PY) -m pytest tests $(PYTEST_ARGS)

# ---- developer helpers --------------------------------------------------------------------
lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: env
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf build output clusterformer/*.so *.egg-info
