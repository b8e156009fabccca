# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PARVIS := $(VENV)/bin/parvis
DATA   ?= data/shapes
STAMP  := $(VENV)/.parvis-installed

.PHONY: setup demo test lint bench-data clean

setup: $(STAMP)

# Reinstall when the dependency list changes; torch/torchvision are pinned here to the builds that
# pip finds on this project's machines (the declared lower bounds in pyproject.toml are looser).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PARVIS) doctor
	rm -rf $(DATA)
	$(PARVIS) data synth --out $(DATA) --n 4000 --size 256
	$(PARVIS) data check $(DATA)
	$(PARVIS) bench data $(DATA) --size 224 --json runs/bench-data.json
	$(PARVIS) demo --data $(DATA) --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check parvis tests benchmarks

clean:
	rm -rf $(VENV) $(DATA) runs
