# make demo: set up, then run the main job on Fashion-MNIST.   make test: set up, then run the tests.
VENV ?= .venv
STAMP := $(VENV)/.rdd-setup

.PHONY: setup demo test benchmark
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rdd demo --out demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -p no:cacheprovider

benchmark: $(STAMP)
	$(VENV)/bin/rdd benchmark configs/fmnist/benchmark.yaml
