#!/usr/bin/env bash
# Single host: train a config on every local device, then evaluate the best checkpoint.
# JAX sees all local GPUs (or CPU devices) of the process; the global batch is split over them.
#
# usage: launch/train_local.sh [--dry-run] CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   --dry-run   print the commands instead of running them
#   SPLIT=test  environment: the split pcam-eval evaluates (default test)
set -euo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
if [ $# -lt 2 ]; then
  echo "usage: $0 [--dry-run] CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
train=(pcam-train "--config=$config" "--workdir=$workdir" "$@")
evaluate=(pcam-eval "--workdir=$workdir" "--split=${SPLIT:-test}")
for arg in "$@"; do
  case "$arg" in --config.data.root=*) evaluate+=("$arg") ;; esac
done
echo "+ ${train[*]}"
echo "+ ${evaluate[*]}"
if [ "$dry" -eq 1 ]; then exit 0; fi
"${train[@]}"
"${evaluate[@]}"
