# FlatAI-JAX — the two commands:
#   make quickstart   set up .venv, train the quickstart config on CPU, correct an example frame
#                     with it and with the shipped whole-frame model
#   make test         set up .venv and run the test suite (what .ci/run calls)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN    ?= runs/quickstart
CONFIG ?= configs/default.py:flat,quickstart
STAMP  := $(VENV)/.stamp-install
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8

.PHONY: setup quickstart test test-all lint clean-run

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e '.[test,graxpert,onnx,gui]'
	$(BIN)/python -m pip install -qq --no-deps 'graxpert>=3.2.0a3'  # the baseline; see pyproject's graxpert extra
	$(BIN)/python -m pip install -qq --no-deps 'jax2onnx>=0.17.1'  # ONNX export; see pyproject's onnx extra
	@touch $(STAMP)

setup: $(STAMP)
	@# Siril (siril-cli) for the Siril round-trip test: installed quietly where apt-get and root are
	@# available; never fails the set-up (the test is skipped without it).
	@command -v siril-cli >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  [ "$$(id -u)" != 0 ] || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends siril) >/dev/null 2>&1 || \
	  echo "setup: apt-get could not install siril; tests/test_siril.py will be skipped"; }
	@# Chromium and its WebDriver for the browser test of `flatai gui` (tests/test_gui.py), the
	@# same way: quiet, never failing (the test is skipped without them).
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || \
	  ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends chromium chromium-driver) >/dev/null 2>&1 || \
	  echo "setup: apt-get could not install chromium; tests/test_gui.py will be skipped"; }
	@test -f flatai_jax/assets/lpips_vgg.npz -a -f flatai_jax/assets/lpips_alex.npz || \
	  $(BIN)/python data_pipelines/convert_lpips_weights.py

quickstart: setup
	XLA_FLAGS= $(BIN)/flatai train --config=$(CONFIG) --workdir=$(RUN)
	XLA_FLAGS= $(BIN)/flatai synth --config=$(CONFIG) --output_dir=$(RUN)/example --num=1 --full_frame
	XLA_FLAGS= $(BIN)/flatai correct $(RUN)/example/0000_observed.fits --checkpoint=$(RUN) \
	  --output=$(RUN)/example/0000_corrected.fits --reference=$(RUN)/example/0000_clean.fits
	XLA_FLAGS= $(BIN)/flatai correct $(RUN)/example/0000_observed.fits \
	  --out=$(RUN)/example/shipped_model --reference=$(RUN)/example/0000_clean.fits
	@echo "outputs: $(RUN)/{samples.png,loss_curve.png,metrics.jsonl,tensorboard/,checkpoints/,example/}"

test: setup lint
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .

test-all: setup lint
	$(BIN)/python -m pytest

clean-run:
	rm -rf $(RUN)
