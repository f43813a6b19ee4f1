# Two commands on a fresh machine: `make run` (set up, build the default weights, start the demo)
# and `make test` (set up, build the weights, run every test). Each creates what is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
WEIGHTS := weights/smollm2-135m.safetensors
CORPUS ?= ../shared/corpus
EXT := vscode-client
EXT_VERSION := $(shell sed -n 's/^  "version": "\(.*\)",/\1/p' $(EXT)/package.json)
VSIX := $(EXT)/nextword-$(EXT_VERSION).vsix
EXT_NODE_MODULES := $(EXT)/node_modules/.package-lock.json

.PHONY: setup weights run test eval setup-presage bench setup-bench clean vsix e2e-setup

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

test: setup weights e2e-setup setup-presage
	$(PY) -m pytest -q

# nextword against Presage, VS Code-style word-based suggestions and a word-frequency baseline on the
# corpus texts: results/eval.json, results/eval.png and a markdown table (see README, "Measured").
# EVAL_ARGS adds options, e.g. --chars 3000 or --predictors presage,word-based,frequency.
eval: setup weights setup-presage
	$(PY) -m nextword eval --text $(wildcard $(CORPUS)/*.txt) --out results/eval.json $(EVAL_ARGS)

# Presage (Debian packages), the n-gram peer of `make eval`, which the tests also drive.
setup-presage:
	bash scripts/setup-presage.sh

# nextword against the naive (transformers) and llama.cpp peer servers on the corpus texts, plus the
# machine's memory bandwidth and the decode step (see README, "Measured"). scripts/setup-bench.sh
# builds llama-cpp-python once into ~/.cache/nextword/wheels. BENCH_ARGS adds options, e.g. --device cuda.
setup-bench: setup
	bash scripts/setup-bench.sh

bench: setup weights setup-bench
	$(PY) -m nextword bench compare --text $(wildcard $(CORPUS)/*.txt) --out results/bench.json \
		--plot results/bench.png $(BENCH_ARGS)

# The VS Code extension, packaged offline with @vscode/vsce (pinned by vscode-client/package-lock.json).
vsix: $(VSIX)

$(EXT_NODE_MODULES): $(EXT)/package.json $(EXT)/package-lock.json
	cd $(EXT) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(VSIX): $(EXT_NODE_MODULES) $(wildcard $(EXT)/src/*.ts) $(EXT)/esbuild.mjs $(EXT)/README.md $(EXT)/.vscodeignore
	cd $(EXT) && npx vsce package --no-dependencies --skip-license --allow-missing-repository -o nextword-$(EXT_VERSION).vsix

# What the VS Code end-to-end test needs (chromium, Node 24, code-server, playwright-core): installed
# once by scripts/setup-e2e.sh, then a quick check; and the .vsix it installs.
e2e-setup: vsix
	bash scripts/setup-e2e.sh

clean:
	rm -rf $(VENV) build *.egg-info server/*.egg-info .pytest_cache $(EXT)/dist $(EXT)/out $(EXT)/*.vsix
