# Every target installs what it needs from this repo's own files into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench paper clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recursivemas demo

test: $(STAMP)
	$(PY) -m pytest -q

paper: $(STAMP)
	$(VENV)/bin/recursivemas report

bench: $(STAMP)
	$(PY) bench/rollout.py
	$(PY) bench/latent_vs_text.py
	$(PY) bench/train_cost.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
