#!/usr/bin/env bash
# One host, all its GPUs, one process (JAX drives every local GPU from it).
#   launch/gpu.sh CONFIG=configs/default.py:combined,base WORKDIR=runs/gpu [GPUS=0,1,2,3] [--dry-run] [--config.x=y ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG=configs/default.py:combined,base WORKDIR=runs/gpu GPUS=all
parse_launch_args "$@"
envs=(XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
      "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true${XLA_FLAGS:+ ${XLA_FLAGS}}")
[[ $GPUS == all ]] || envs+=("CUDA_VISIBLE_DEVICES=${GPUS}")
run_or_print env "${envs[@]}" flatai train "--config=${CONFIG}" "--workdir=${WORKDIR}" "${EXTRA[@]}"
