# Attention from Scratch: two commands, both idempotent.
#   make course   set up .venv, then open the course in JupyterLab (prints the URL)
#   make test     set up .venv, then check formatting and lint and run the test suite (what CI runs)
#   make explorer the Attention Explorer: every heatmap explorer on one page (Voilà, 127.0.0.1)
#   make gpu-check on a CUDA machine: gpu tests, notebooks, benchmarks, grading -> gpu-report.md
# .venv is (re)installed only when pyproject.toml changes.

PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV := .venv
BIN := $(VENV)/bin
# Jupyter refuses to run as root unless told; containers often are root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: course test release explorer gpu-check

course: $(VENV)/installed
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/exercises $(ALLOW_ROOT)

# Chromium for the browser tests where it can be installed (else one line says why they skip);
# then formatting and lint, which read their scope and excludes (notebooks, the generated
# release) from pyproject.toml; then the tests on up to TEST_WORKERS cores (pytest-xdist; the
# tests that must not run at once are grouped in tests/conftest.py).
TEST_WORKERS ?= 4
test: $(VENV)/installed
	bash tools/install-debian-packages.sh
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -n auto --maxprocesses=$(TEST_WORKERS) --durations=15

# Voilà serves the gallery notebook as a page of widgets, its code hidden. EXPLORER_PORT=0
# would pick a free port; the URL is printed either way.
EXPLORER_PORT ?= 8866
explorer: $(VENV)/installed
	$(BIN)/voila explorer/attention-explorer.ipynb --no-browser --Voila.ip=127.0.0.1 \
		--port=$(EXPLORER_PORT) --progressive_rendering=True --strip_sources=True

# Everything that needs a GPU, into one Markdown report (tools/gpu_check.py says what it runs);
# without a CUDA device it says so and exits 0. `--device cpu --quick` checks its plumbing.
gpu-check: $(VENV)/installed
	$(BIN)/python -m tools.gpu_check --report gpu-report.md

release: $(VENV)/installed
	$(BIN)/python -m grader release

# torch first, pinned: pip then keeps that build (the CPU one where it is on disk) instead of
# resolving torch again for the project's own dependencies. Then the course with every extra
# (`all`: grader, lab, explorer, test; pyproject.toml says what each holds).
$(VENV)/installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $@
