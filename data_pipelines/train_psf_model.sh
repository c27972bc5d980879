#!/usr/bin/env bash
# Run-once job: train the aberration cleanup model that ships with the package
# (flatai_jax/assets/psf_model) and export it (parameters + config only).
#
#   bash data_pipelines/train_psf_model.sh [STEPS]   # default: the config's 1500 steps
#
# Config: configs/psf.py:quickstart (128-px crops deconvolved in the step by Richardson–Lucy
# with their true PSF field; the network learns the cleanup towards the target PSF).
# On the 2-core CPU: ~70 min (0.3–0.4 steps/s). Resumable: run it again after a kill.
exec bash "$(dirname "$0")/train_shipped.sh" configs/psf.py:quickstart "${RUN:-runs/psf_model}" \
  flatai_jax/assets/psf_model "${1:-1500}"
