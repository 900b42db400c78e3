# Set up a virtualenv in .venv, then run the demo or the tests.
#   make demo   build the built-in demo experiment and decode it
#   make test   run the test suite
# TORCH selects the torch build: the default pin is the CPU wheel our CI uses; on a GPU
# machine install your CUDA build, e.g. `make install TORCH="torch --index-url https://download.pytorch.org/whl/cu128"`.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
DEMO   ?= demo_experiment

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	@test -d $(DEMO)/latents || $(PY) -m latent_decoder.demo $(DEMO)
	$(VENV)/bin/latent-decoder decode $(DEMO)

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info .pytest_cache
