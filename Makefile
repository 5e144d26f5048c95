# The README's two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nmai-setup

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel here; letting pip choose a torch would pull a multi-GB CUDA build.
# Elsewhere, point TORCH_PIP_ARGS at PyTorch's CPU wheel index (--index-url ...) to keep the CPU build.
TORCH_PIP_ARGS ?=
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/nmai demo --out demo-out

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) demo-out .pytest_cache
