#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): installs the package on every worker and runs the
# same flatai train on all of them; jax.distributed.initialize() auto-detects the TPU pod.
#   launch/tpu_vm.sh TPU=my-v5p-64 ZONE=us-east5-a CONFIG=configs/default.py:combined,large \
#       WORKDIR=gs://bucket/runs/l [REPO=https://.../flatai-jax.git] [--dry-run] [--config.x=y ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
TPU=flatai-tpu ZONE=us-central2-b PROJECT="" CONFIG=configs/default.py:combined,large
WORKDIR=gs://YOUR_BUCKET/runs/tpu REPO=. SETUP=1
parse_launch_args "$@"
proj=(); [[ -n $PROJECT ]] && proj=("--project=${PROJECT}")
train=(.venv/bin/flatai train "--config=${CONFIG}" "--workdir=${WORKDIR}" "${EXTRA[@]}")
remote="cd ~/flatai-jax && $(shell_join "${train[@]}")"
if [[ $SETUP == 1 ]]; then
  setup="python3 -m venv ~/flatai-jax/.venv && ~/flatai-jax/.venv/bin/pip install -q -e ~/flatai-jax 'jax[tpu]'"
  run_or_print gcloud compute tpus tpu-vm scp --recurse "${REPO}" "${TPU}:~/flatai-jax" \
    --zone="${ZONE}" --worker=all "${proj[@]}"
  run_or_print gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" --worker=all "${proj[@]}" \
    --command="${setup}"
fi
run_or_print gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" --worker=all "${proj[@]}" \
  --command="${remote}"
