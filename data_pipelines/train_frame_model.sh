#!/usr/bin/env bash
# Run-once job: train the frame-level (global stage) flat/background model that ships with the
# package (flatai_jax/assets/frame_model) and export it (parameters + config only).
#
#   bash data_pipelines/train_frame_model.sh [STEPS]   # default: the config's 1500 steps
#
# Config: configs/frame.py:quickstart (whole virtual frames at the 96 × 128 working grid).
# On the 2-core CPU: ~60 min (0.3–0.8 steps/s depending on load).
exec bash "$(dirname "$0")/train_shipped.sh" configs/frame.py:quickstart "${RUN:-runs/frame_model}" \
  flatai_jax/assets/frame_model "${1:-1500}"
