#!/usr/bin/env bash
# Train a model that ships with the package and export it (parameters + config only); called by
# train_frame_model.sh and train_psf_model.sh. Resumable: run it again after a kill.
#
#   bash data_pipelines/train_shipped.sh CONFIG RUN_DIR DEST STEPS [--config.KEY=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=$1 RUN=$2 DEST=$3 STEPS=$4
shift 4  # the rest: config overrides passed to flatai train
BIN=${BIN:-.venv/bin}
XLA_FLAGS= "$BIN/flatai" train --config="$CONFIG" --workdir="$RUN" \
  --config.train.steps="$STEPS" --config.train.max_to_keep=2 "$@"
"$BIN/flatai" export --checkpoint="$RUN" --output="$DEST"
du -sh "$DEST"
echo "shipped model: $DEST"
