#!/usr/bin/env bash
# GKE through XPK: a workload of NUM_SLICES TPU slices (or GPU nodes) in an existing cluster,
# running the same flatai train in the project's container image on every host.
#   launch/xpk.sh CLUSTER=my-cluster DEVICE=v5p-128 IMAGE=gcr.io/p/flatai:latest \
#       CONFIG=configs/default.py:combined,large WORKDIR=gs://bucket/runs/x [NUM_SLICES=1] [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"
CLUSTER=flatai-cluster DEVICE=v5p-8 IMAGE=flatai-jax:latest NUM_SLICES=1 ZONE=us-east5-a
CONFIG=configs/default.py:combined,large WORKDIR=gs://YOUR_BUCKET/runs/xpk WORKLOAD=flatai-$(date +%m%d-%H%M)
parse_launch_args "$@"
cmd=$(shell_join flatai train "--config=${CONFIG}" "--workdir=${WORKDIR}" "${EXTRA[@]}")
run_or_print xpk workload create --cluster="${CLUSTER}" --workload="${WORKLOAD}" --zone="${ZONE}" \
  --device-type="${DEVICE}" --num-slices="${NUM_SLICES}" --docker-image="${IMAGE}" --command="${cmd}"
