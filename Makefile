# make demo: set up, then run the main job on Fashion-MNIST.   make test: set up, then run the tests.
# Small CPU tensors run fastest on one thread per process; raise OMP_NUM_THREADS on a bigger machine.
VENV ?= .venv
STAMP := $(VENV)/.rdd-setup

.PHONY: setup demo test test-fast benchmark
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/rdd demo --out demo

# make test: one pytest worker per core (tests write only to their own temporary folders); a worker that runs
# out of tests takes queued ones from the other (worksteal), and the slowest tests are listed at the end.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -p no:cacheprovider -n $${PYTEST_WORKERS:-2} --dist worksteal --durations=20

test-fast: $(STAMP)  # the unit layer: no test that trains a model or starts torchrun
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -p no:cacheprovider -m "not slow"

benchmark: $(STAMP)
	$(VENV)/bin/rdd benchmark configs/fmnist/benchmark.yaml
