#!/usr/bin/env bash
# Run-once job: fine-tune the shipped aberration cleanup (flatai_jax/assets/psf_model) on the
# current in-step deconvolution and export it over the shipped one (parameters + config only).
#
#   bash data_pipelines/finetune_psf_model.sh [STEPS]   # default 500
#   RUN=runs/x DEST=runs/x_export bash data_pipelines/finetune_psf_model.sh   # export elsewhere
#
# Starts from a copy of the shipped parameters (${RUN}_init, made once: running it again resumes
# and never fine-tunes the fine-tuned), fresh AdamW at 3e-4 with its cosine schedule. Made the
# shipped model of 2026-12-04 (README "The cleanup trained on the correction's restoration"): the
# 1500-step model of commit 9c08abb, whose training RL restored to points with the full pixel
# compensation, fine-tuned on the restoration rule the correction uses (deconvolve.restoration,
# the crop's seeing kept). On the 2-core CPU: 0.21 steps/s, 40 min. From scratch instead:
# data_pipelines/train_psf_model.sh (1500 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/psf_finetune}
DEST=${DEST:-flatai_jax/assets/psf_model}
mkdir -p "$(dirname "$RUN")"
[ -d "${RUN}_init" ] || cp -r flatai_jax/assets/psf_model "${RUN}_init"
exec bash data_pipelines/train_shipped.sh configs/psf.py:quickstart "$RUN" \
  "$DEST" "${1:-500}" --config.train.init_params="${RUN}_init" \
  --config.optim.learning_rate=3e-4
