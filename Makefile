# Set up a virtualenv in .venv, then run the demo or the tests.
#   make demo   build the demo experiment (shapes emerging from noise) and decode it
#   make test   run the test suite
# TORCH selects the torch build: the default pin is the CPU wheel our CI uses; on a GPU
# machine install your CUDA build, e.g. `make install TORCH="torch --index-url https://download.pytorch.org/whl/cu128"`.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
# Packages are installed with uv (itself pip-installed into the venv first, which keeps pip there too).
# uv reads no PIP_* settings: a pip --find-links folder (where our CI keeps its CPU torch wheel) is
# handed on. Bytecode is written by importing, not by uv's --compile-bytecode, which compiles all of
# site-packages (about 15,700 files: 15 s of a 22 s install on our 2-core CI box) where the tool and its
# tests import about a third: two processes import the heavy part (torch with diffusers; Ray and the
# rest), 10 s, before three pytest workers or a demo and its Ray actors would each compile it at once.
UV     := $(VENV)/bin/uv
UV_PIP := $(UV) pip install --quiet --python $(PY) $(addprefix --find-links ,$(PIP_FIND_LINKS))
WARM_TORCH := import torch, diffusers; from diffusers import AutoencoderKLWan
WARM_REST  := import ray, ray.util.queue, imageio_ffmpeg, imageio.v3, jinja2, yaml, click, PIL.Image, safetensors.torch
# The tests start a few hundred Python processes (CLI runs, Ray actors, the wheel's venv) and the demo
# a few, each importing this package, whose editable install is not compiled: its bytecode is cached
# in __pycache__ (ignored by git) by the first process, also where the environment sets
# PYTHONDONTWRITEBYTECODE.
RUN_ENV := PYTHONDONTWRITEBYTECODE=
DEMO   ?= demo_experiment

# The oldest diffusers pyproject.toml accepts, laid over the venv's own (a --target folder on
# PYTHONPATH, not a second venv) for `make test-oldest`.
DIFFUSERS_OLDEST := $(shell sed -n 's/^ *"diffusers>=\([0-9.]*\)".*/\1/p' pyproject.toml)
OLDEST := .oldest/diffusers-$(DIFFUSERS_OLDEST)

.PHONY: install demo test test-oldest clean browser bench bench-gpu

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(UV_PIP) $(TORCH)
	$(UV_PIP) -e ".[test]"
	$(RUN_ENV) $(PY) -c "$(WARM_TORCH)" & warm=$$!; $(RUN_ENV) $(PY) -c "$(WARM_REST)" && wait $$warm
	touch $@

demo: install
	$(RUN_ENV) $(VENV)/bin/latent-decoder demo $(DEMO)

# tests/test_gallery.py opens the gallery in Debian's chromium (driven by Playwright; no browser
# download): installed here when missing, as root with apt-get; otherwise that test skips, saying why.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
		|| echo "chromium could not be installed: the browser test will be skipped"; fi

# Three pytest workers (pytest-xdist) on our 2-core CI box, each taking whole test files (a module's
# fixtures, its Ray runtime or cluster, are made once): many tests wait on processes, actors and
# deadlines, so two workers left a third of the CPU idle (pytest on the 2-core VM: 8 min 56 s with
# two, 7 min 33 s with three, 7 min 27 s with four). Not --dist loadgroup: with pytest 9.2
# pytest-xdist 3.8 no longer keeps an xdist_group together. --no-loadscope-reorder: files are handed
# out in the order tests/conftest.py gives (the longest first), not sorted by how many tests they hold.
TEST_WORKERS ?= 3

test: install browser
	$(RUN_ENV) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The family parity tests (each family's decode against its own diffusers pipeline) on the oldest
# diffusers release we declare; subprocesses and Ray workers inherit the PYTHONPATH.
test-oldest: install $(OLDEST)
	PYTHONPATH=$(CURDIR):$(CURDIR)/$(OLDEST) $(PY) -c 'import diffusers, sys; \
		sys.exit(0 if diffusers.__version__ == "$(DIFFUSERS_OLDEST)" else f"got diffusers {diffusers.__version__}")'
	$(RUN_ENV) PYTHONPATH=$(CURDIR):$(CURDIR)/$(OLDEST) $(PY) -m pytest -q -n $(TEST_WORKERS) tests/test_famil*.py tests/test_pipeline_parity.py

$(OLDEST):
	rm -rf $@.tmp
	$(UV_PIP) --no-deps --target $@.tmp diffusers==$(DIFFUSERS_OLDEST)
	mv $@.tmp $@

# Benchmarks at CPU-friendly sizes; each prints its figures (see benchmarks/*.py for full-size options).
bench: install
	$(UV_PIP) -e ".[bench]"
	$(PY) benchmarks/preview_throughput.py
	$(VENV)/bin/latent-decoder bench
	$(PY) benchmarks/state_scale.py --items 20000
	$(PY) benchmarks/ray_scaling.py
	$(PY) benchmarks/ray_overlap.py
	$(PY) benchmarks/wan_memory.py
	$(PY) benchmarks/process_start.py

# On a GPU machine (after `make install TORCH=...` with a CUDA build): the full-size figures of
# BENCHMARKS.md's GPU section in one go, plus the CUDA-only decode equivalence test.
bench-gpu: install
	$(UV_PIP) -e ".[bench]"
	PYTHON=$(PY) bash benchmarks/gpu_run.sh

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info .pytest_cache .oldest
