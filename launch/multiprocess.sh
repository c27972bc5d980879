#!/usr/bin/env bash
# N JAX processes on this machine, talking through a local coordinator — the CPU
# rehearsal of a multi-host run (each process gets DEVICES CPU devices).
#   launch/multiprocess.sh NPROC=2 DEVICES=4 PORT=12355 CONFIG=... WORKDIR=runs/mp [--dry-run] [--config.x=y ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
NPROC=2 DEVICES=4 PORT=12355 CONFIG=configs/default.py:flat,quickstart WORKDIR=runs/multiprocess
parse_launch_args "$@"
pids=()
for ((i = 0; i < NPROC; i++)); do
  cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=${DEVICES}" JAX_PLATFORMS=cpu
       flatai train "--config=${CONFIG}" "--workdir=${WORKDIR}"
       "--coordinator_address=localhost:${PORT}" "--num_processes=${NPROC}" "--process_id=${i}"
       "${EXTRA[@]}")
  if [[ $DRY_RUN == 1 ]]; then shell_join "${cmd[@]}"; echo; continue; fi
  "${cmd[@]}" > "${WORKDIR}.process${i}.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
[[ $DRY_RUN == 1 ]] || { cat "${WORKDIR}.process0.log"; exit $status; }
