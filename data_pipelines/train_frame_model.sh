#!/usr/bin/env bash
# Run-once job: train the frame-level (global stage) flat/background model that ships with the
# package (flatai_jax/assets/frame_model) and export it (parameters + config only).
#
#   bash data_pipelines/train_frame_model.sh [STEPS]   # default: the config's 1500 steps
#
# Config: configs/frame.py:quickstart (whole virtual frames at the 96 × 128 working grid).
# On the 2-core CPU: ~60 min (0.3–0.8 steps/s depending on load).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-1500}
RUN=${RUN:-runs/frame_model}
BIN=${BIN:-.venv/bin}
XLA_FLAGS= "$BIN/flatai" train --config=configs/frame.py:quickstart --workdir="$RUN" \
  --config.train.steps="$STEPS" --config.train.max_to_keep=2
DEST=flatai_jax/assets/frame_model
"$BIN/flatai" export --checkpoint="$RUN" --output="$DEST"
du -sh "$DEST"
echo "shipped model: $DEST"
