#!/usr/bin/env bash
# Run-once job: train the aberration cleanup model that ships with the package
# (flatai_jax/assets/psf_model) and export it (parameters + config only).
#
#   bash data_pipelines/train_psf_model.sh [STEPS]   # default: the config's 1500 steps
#
# Config: configs/psf.py:quickstart (128-px crops deconvolved in the step by Richardson–Lucy
# with their true PSF field; the network learns the cleanup towards the target PSF).
# On the 2-core CPU: ~60 min (about 0.4 steps/s). Resumable: run it again after a kill.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-1500}
RUN=${RUN:-runs/psf_model}
BIN=${BIN:-.venv/bin}
XLA_FLAGS= "$BIN/flatai" train --config=configs/psf.py:quickstart --workdir="$RUN" \
  --config.train.steps="$STEPS" --config.train.max_to_keep=2
DEST=flatai_jax/assets/psf_model
"$BIN/flatai" export --checkpoint="$RUN" --output="$DEST"
du -sh "$DEST"
echo "shipped model: $DEST"
