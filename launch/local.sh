#!/usr/bin/env bash
# Train on this machine (all local devices: CPU, one or more GPUs).
#   launch/local.sh CONFIG=configs/default.py:flat,quickstart WORKDIR=runs/local [--dry-run] [--config.x=y ...]
set -euo pipefail
CONFIG=configs/default.py:flat,quickstart
WORKDIR=runs/local
DRY=0
EXTRA=()
for arg in "$@"; do
  case "$arg" in
    CONFIG=*) CONFIG="${arg#CONFIG=}" ;;
    WORKDIR=*) WORKDIR="${arg#WORKDIR=}" ;;
    --dry-run) DRY=1 ;;
    *) EXTRA+=("$arg") ;;
  esac
done
cmd=(flatai train "--config=${CONFIG}" "--workdir=${WORKDIR}" "${EXTRA[@]}")
if [[ $DRY == 1 ]]; then echo "${cmd[@]}"; else exec "${cmd[@]}"; fi
