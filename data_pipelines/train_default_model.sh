#!/usr/bin/env bash
# Run-once job: train the small model that ships with the package
# (flatai_jax/assets/default_model), so `flatai correct IMAGE` works on a fresh install.
#
#   bash data_pipelines/train_default_model.sh [STEPS]   # default 4000 steps, ~30-60 min on 2 CPU cores
#
# Config: configs/default.py:flat,quickstart with train.steps=STEPS (quickstart width, ~0.3 M
# parameters, 64-px crops). Only the parameters and config are shipped (`flatai export`).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-4000}
RUN=runs/default_model
BIN=${BIN:-.venv/bin}
XLA_FLAGS= "$BIN/flatai" train --config=configs/default.py:flat,quickstart --workdir="$RUN" \
  --config.train.steps="$STEPS" --config.train.checkpoint_every="$STEPS" \
  --config.train.sample_every=1000 --config.train.max_to_keep=1
DEST=flatai_jax/assets/default_model
"$BIN/flatai" export --checkpoint="$RUN" --output="$DEST"
du -sh "$DEST"
echo "shipped model: $DEST (step $STEPS)"
