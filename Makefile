# The commands of the README: `make pipeline`, `make test` and `make test-fast`. Each sets up .venv first.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install pipeline test test-fast bench bench-scale azurite mermaid

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip==26.3
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

pipeline: $(STAMP)
	. $(VENV)/bin/activate && dvc repro

# pytest-xdist: whole modules to each worker (module fixtures built once), longest first (tests/conftest.py), and
# the cores shared out among the workers: torch's threads spinning against the other worker's made the suite 23%
# slower on 2 cores (672 s against 546 s with one thread each).
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder
TEST_THREADS := OMP_NUM_THREADS=$$(( $$(nproc) / $(PYTEST_WORKERS) > 1 ? $$(nproc) / $(PYTEST_WORKERS) : 1 ))

test: $(STAMP) azurite mermaid
	. $(VENV)/bin/activate && ruff check . && ruff format --check . && $(TEST_THREADS) pytest $(XDIST)

# The edit loop: every test but the end-to-end and slow ones (markers e2e and slow).
test-fast: $(STAMP) mermaid
	. $(VENV)/bin/activate && ruff check . && ruff format --check . && $(TEST_THREADS) pytest $(XDIST) -m "not e2e and not slow"

# Benchmarks of the default pipeline's models (builds them first if needed).
bench: $(STAMP)
	. $(VENV)/bin/activate && dvc repro && pytest tests/benchmarks --benchmark-only -s

# The scale profile (benchmarks/scale.py): 0.5B- and 1.5B-shaped models through the project's quantize path and
# speed measurement, against PyTorch and llama.cpp. Models and exports go to BENCH_SCALE_CACHE, outside git.
# llama-cpp-python builds from source for this CPU's instruction sets, with ggml's AMX kernels off (benchmarks/peer.py).
BENCH_SCALE_CACHE ?= $(HOME)/.cache/slmops/bench-scale
bench-scale: $(STAMP)
	CMAKE_ARGS="$$($(VENV)/bin/python -m benchmarks.peer --cmake-args)" $(VENV)/bin/pip install --quiet -e '.[test,bench-scale]'
	. $(VENV)/bin/activate && python -m benchmarks.scale --cache $(BENCH_SCALE_CACHE) $(BENCH_SCALE_ARGS)

# Azurite (an Azure Blob service on loopback) for the DVC remote test; npm is the only way to get it.
AZURITE := tools/azurite/node_modules/.bin/azurite-blob
azurite: $(AZURITE)
$(AZURITE): tools/azurite/package-lock.json
	npm ci --no-audit --no-fund --prefix tools/azurite
	touch $(AZURITE)

# Mermaid (in jsdom) for the check that the report comment's charts parse as GitHub's renderer parses them.
MERMAID := tools/mermaid/node_modules/.package-lock.json
mermaid: $(MERMAID)
$(MERMAID): tools/mermaid/package-lock.json
	npm ci --no-audit --no-fund --prefix tools/mermaid
	touch $(MERMAID)
