# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create or reuse .venv; the project is reinstalled into it only when pyproject.toml changes.
# FAST=1 / GPU=1 switch an option on (0 or empty: off).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FAST ?=

.PHONY: demo compare test test-browser bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hydra-umm demo $(if $(filter-out 0,$(FAST)),--fast)

# HYDRA against Harmon on the demo's budget (reuses the demo's HYDRA); report in runs/demo/compare/
# (runs/demo/fast/compare/ with FAST=1)
compare: $(STAMP)
	$(BIN)/hydra-umm compare --models hydra,harmon $(if $(filter-out 0,$(FAST)),--fast)

# the browser tests run in test-browser (which .ci/run calls after test), not here
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not browser"

# headless Chromium drives the served page; Debian's chromium and chromium-driver are installed when
# missing and apt-get may run (root); otherwise the test reports why it skips
test-browser: $(STAMP)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
	      || echo "test-browser: could not install chromium and chromium-driver"; \
	  else \
	    echo "test-browser: chromium missing and apt-get unavailable or not root"; \
	  fi; \
	fi
	$(BIN)/python -m pytest -q -rs -m browser

# COMPARE=previous.json prints each figure's change; GPU=1 runs the paper preset on a CUDA GPU
bench: $(STAMP)
	$(BIN)/hydra-umm bench $(if $(filter-out 0,$(GPU)),--gpu --out bench-gpu.json,--out bench.json) $(if $(COMPARE),--compare $(COMPARE))

clean-venv:
	rm -rf $(VENV)
