#!/usr/bin/env bash
# Train on this machine with all its local devices (CPU, or every GPU of this host).
#   launch/local.sh CONFIG=configs/default.py:flat,quickstart WORKDIR=runs/local [--dry-run] [--config.x=y ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG=configs/default.py:flat,quickstart WORKDIR=runs/local
parse_launch_args "$@"
run_or_print flatai train "--config=${CONFIG}" "--workdir=${WORKDIR}" "${EXTRA[@]}"
