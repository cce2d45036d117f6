# Every target installs what it needs from this repo's own files into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-patterns test bench report paper clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recursivemas demo

# The other bundled patterns (distillation, mixture, deliberation), 100 test problems each: about 8 minutes.
demo-patterns: $(STAMP)
	for name in distillation mixture deliberation; do $(VENV)/bin/recursivemas demo --bundled $$name -n 100 --out runs/demo-$$name || exit 1; done

test: $(STAMP)
	$(PY) -m pytest -q

report: $(STAMP)
	$(VENV)/bin/recursivemas report

paper: report

bench: $(STAMP)
	$(PY) bench/rollout.py
	$(PY) bench/latent_vs_text.py
	$(PY) bench/train_cost.py
	$(PY) bench/prefix_reuse.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
