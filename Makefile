# Two commands for a newcomer: `make run` (serve) and `make test` (everything CI runs).
# Both install what they need: a venv with pinned wheels, and (for tests) espeak-ng, sox and chromium.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
CLUSTER_ARGS ?=
APT_PACKAGES := espeak-ng sox chromium

.PHONY: run test bench cluster lint system-deps venv clean

run: $(STAMP)
	$(PY) -m omni_server $(ARGS)

test: $(STAMP) system-deps
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONASYNCIODEBUG=1 $(PY) -m pytest -q $(ARGS)

# Every benchmark by default (results: bench/RESULTS.md); BENCH=capacity (or realtime, webrtc, cluster, voices)
# runs one, and ARGS go to each one run.
BENCH  ?= realtime capacity cluster
bench: $(STAMP)
	for b in $(BENCH); do HF_HUB_OFFLINE=1 $(PY) -m bench.$$b $(ARGS) || exit 1; done

# Cluster mode (docs/cluster.md): engines as Ray Serve replicas. Needs `ray start --head` (or RAY_ADDRESS) first.
cluster: $(STAMP)
	$(PY) -m omni_server --cluster auto $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check omni_server tests bench examples
	$(VENV)/bin/ruff format --check omni_server tests bench examples

venv: $(STAMP)

# torch is pinned and installed with everything else, so pip never swaps in a CUDA build on a CPU box.
# requirements-nodeps.txt holds wheels used only for a file they ship (the Smart Turn model), without their deps.
# On a CPU-only torch, two wheels from PyPI are CUDA-only builds: torchaudio (needed by vocos) works in
# pure-Python mode once its compiled libraries are removed, and torchvision (pulled in by timm, unused by
# the model's code) breaks transformers' image utilities, so it is removed.
$(STAMP): requirements_o2.6.txt requirements-dev.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements_o2.6.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	@if ! $(PY) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then \
		echo "CPU-only torch: switching torchaudio to pure-Python mode and removing torchvision"; \
		ta=$$($(PY) -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('torchaudio').origin))"); \
		rm -f "$$ta"/lib/*.so; \
		$(PY) -m pip uninstall --quiet --yes torchvision; \
	fi
	touch $(STAMP)

# espeak-ng + sox make speech fixtures; chromium runs the browser tests. Installed once, as root or via sudo.
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
		echo "installing$$missing"; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
