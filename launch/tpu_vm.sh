#!/usr/bin/env bash
# Cloud TPU VM (a pod slice of several hosts): run pcam-train, then pcam-eval, on
# every worker at once over `gcloud ... ssh --worker=all`. Each worker is one
# process owning its local TPU chips; jax.distributed finds the coordinator,
# process count and ids from the TPU metadata (--distributed=on).
#
#   launch/tpu_vm.sh [--dry-run] TPU_NAME CONFIG WORKDIR [--config.FIELD=VALUE ...]
#
# Environment knobs:
#   ZONE=us-central2-b   the TPU's zone (required unless gcloud has a default)
#   PROJECT=my-project   the Google Cloud project (default: gcloud's)
#   REPO_DIR=~/pcam_jax  where the repository is checked out on every worker
#   VENV=.venv           its virtual environment, relative to REPO_DIR, with
#                        pcam_jax and jax[tpu] installed on every worker
#   SPLIT=test           the split pcam-eval evaluates
# WORKDIR and data.root must name the same shared storage on every worker (an
# NFS/Filestore mount or a gcsfuse-mounted bucket): all workers write each
# checkpoint together.
set -euo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
if [ $# -lt 3 ]; then
  echo "usage: $0 [--dry-run] TPU_NAME CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
tpu=$1
config=$2
workdir=$3
shift 3
repo=${REPO_DIR:-'~/pcam_jax'}
venv=${VENV:-.venv}
ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --worker=all)
if [ -n "${ZONE:-}" ]; then ssh+=("--zone=$ZONE"); fi
if [ -n "${PROJECT:-}" ]; then ssh+=("--project=$PROJECT"); fi
quoted_args=$(printf ' %q' "$@")
eval_args=""
for arg in "$@"; do
  case "$arg" in --config.data.root=*) eval_args+=$(printf ' %q' "$arg") ;; esac
done
train="cd $repo && $venv/bin/pcam-train --distributed=on --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir")$quoted_args"
evaluate="cd $repo && $venv/bin/pcam-eval --distributed=on --workdir=$(printf '%q' "$workdir") --split=${SPLIT:-test}$eval_args"
echo "+ ${ssh[*]} --command='$train'"
echo "+ ${ssh[*]} --command='$evaluate'"
if [ "$dry" -eq 1 ]; then exit 0; fi
"${ssh[@]}" --command="$train"
"${ssh[@]}" --command="$evaluate"
