#!/usr/bin/env bash
# Learning curves on a lent GPU (benchmark, not a test): several pcam-train runs at once on one
# GPU, on the real PCam subset, through bench/gpu_train.py (pcam-train with a stand-in for clu's
# TensorFlow writer), then one CSV of every validation and a JSON of each run's plan and rates.
#
#   DATA=/tmp/pcam-subset bash bench/gpu_learning_curve.sh [OUTDIR]   # default: $OUT
#
# Two groups of runs share the machine (16 cores feed the loaders; the GPU is shared, memory
# grown on demand):
#   full  the full-size models for a wall-clock budget (train_minutes=$FULL_MIN): p4mdensenet
#         (Veeling et al.'s recipe, configs/p4mdensenet.py) and p4mresnet (the cpu_subset recipe)
#   cpu   cpu_subset recipe variants at a fixed $CPU_STEPS steps of 64, the step count the
#         2-core CPU reaches in its 28-minute budget, so each answers "what would this recipe
#         reach on the CPU" in minutes (the result does not depend on the device)
# Each run is stopped at $RUN_S seconds; what it validated until then is kept.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/pcam_jax_gpu_curve}}
data=${DATA:-/tmp/pcam-subset}
mkdir -p "$out"
runs=/tmp/gpu_curve_runs
rm -rf "$runs" && mkdir -p "$runs"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=3
FULL_MIN=${FULL_MIN:-6}  # 4 was too short for p4mdensenet: 8 processes compiling at once made its set-up 202 s
CPU_STEPS=${CPU_STEPS:-5000}
RUN_S=${RUN_S:-480}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
"$PY" -c "import jax, flax, optax, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__, jax.devices())" 2>&1 | tee -a "$out/device.txt"

start() {  # label config workers args...
  local label=$1 config=$2 workers=$3
  shift 3
  mkdir -p "$runs/$label"
  date +%s.%N >"$runs/$label/t0"
  echo "$config $*" >"$runs/$label/args"
  timeout "$RUN_S" "$PY" bench/gpu_train.py --config="$config" --workdir="$runs/$label" \
    --config.data.source=folder --config.data.root="$data" --config.data.worker_count="$workers" \
    --config.eval_every_steps=250 "$@" >"$runs/$label/train.log" 2>&1 &
}
S="--config.train_minutes=0 --config.num_train_steps=$CPU_STEPS"
start full-p4mdensenet configs/p4mdensenet.py 2 --config.train_minutes="$FULL_MIN" --config.checkpoint_every_steps=1000
start full-p4mresnet configs/cpu_subset.py:p4mresnet 2 --config.train_minutes="$FULL_MIN"
start cpu-p4resnet configs/cpu_subset.py:p4resnet 2 $S
start cpu-resnet configs/cpu_subset.py:resnet 2 $S
start cpu-p4resnet-lr4e-3 configs/cpu_subset.py:p4resnet 2 $S --config.optimizer.learning_rate=4e-3
start cpu-p4resnet-wd0.1-ema0.9995 configs/cpu_subset.py:p4resnet 2 $S --config.optimizer.weight_decay=0.1 --config.ema_decay=0.9995
start cpu-p4mresnet-2-4-8-16 configs/cpu_subset.py:p4mresnet 2 $S "--config.model.widths=(2,4,8,16)"
start cpu-p4resnet-8000steps configs/cpu_subset.py:p4resnet 2 --config.train_minutes=0 --config.num_train_steps=8000
wait
"$PY" bench/gpu_curve_summary.py "$runs" "$out"
