# Two commands on a fresh machine: `make run` (set up, build the default weights, start the demo)
# and `make test` (set up, build the weights, run every test). Each creates what is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
WEIGHTS := weights/smollm2-135m.safetensors
CORPUS ?= ../shared/corpus

.PHONY: setup weights run test eval clean

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,plot]'
	touch $@

weights: $(WEIGHTS)

$(WEIGHTS): | $(INSTALLED)
	$(PY) -m nextword weights build

run: setup weights
	$(PY) -m nextword demo

test: setup weights
	$(PY) -m pytest -q

eval: setup weights
	$(PY) -m nextword eval --text $(wildcard $(CORPUS)/*.txt) --out results/eval.json

clean:
	rm -rf $(VENV) build *.egg-info server/*.egg-info .pytest_cache
