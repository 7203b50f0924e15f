#!/usr/bin/env bash
# The GPU items of BENCHMARKS.md's "On a GPU" (issue 22; benchmark, not a test): an
# end-to-end P4M-DenseNet epoch with its peak device memory by batch size, then the full-size
# models trained to the end of a wall-clock schedule on the real subset, and the best exported as
# a bundle. On a CUDA machine whose python3 has jax[cuda], flax, optax, grain, clu, h5py:
#
#   DATA=/tmp/pcam-subset bash bench/gpu_full_size.sh [epoch|train|all] [OUTDIR]   # default all, $OUT
#
# epoch  bench/epoch.py on a synthetic PCam of PCam's size (262,144 train / 32,768 valid patches,
#        written once to /tmp), configs/p4mdensenet.py with configs/cpu_subset.py's augmentation
#        (D4, colour and HED stain jitter) on the device, at each dtype:batch of $EPOCH_RUNS:
#        images/s end to end, seconds per epoch and peak device memory -> epoch.txt, epoch.csv
# train  $DATA's folder layout (train/{0,1}, valid/{0,1}: the real subset), four runs at once on
#        the one GPU, each sized by train_minutes=$TRAIN_MIN to end its schedule in time:
#          p4mdensenet, densenet    Veeling et al.'s DenseNets (configs/densenet.py's Adam 1e-3)
#                                   with the cpu_subset augmentation on the device
#          resnet-2x, p4resnet-2x   the cpu_subset recipe (augmentation on the device) at twice
#                                   its widths (32 ... 256 channels; p4 at the plain one's FLOPs)
#        -> gpu_curve.csv, gpu_runs.json, gpu_logs.txt (bench/gpu_curve_summary.py), and the run
#        with the best final valid AUC exported with pcam-export -> bundle.tar
#
# A lent machine reaches no network and carries at most 64 MiB per call, so the subset travels
# in two archives made here (`bash bench/gpu_full_size.sh pack`: .gpu_data/subset_{a,b}.tar.gz,
# git-ignored through .git/info/exclude), one per call, and waits in /tmp between the calls:
#   call 1, carry .gpu_data/subset_a.tar.gz:  bash bench/gpu_full_size.sh unpack epoch
#   call 2, carry .gpu_data/subset_b.tar.gz:  bash bench/gpu_full_size.sh unpack train
# Each part has its own time limit, so one slow part cannot eat the other.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [[ ${1:-} == pack ]]; then  # here: the subset in two archives for two device calls
  src=${SUBSET:-../shared/data/pcam-subset}
  mkdir -p .gpu_data
  grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo /.gpu_data/ >>.git/info/exclude
  tar -C "$src" -czf .gpu_data/subset_a.tar.gz README.md valid train/0
  tar -C "$src" -czf .gpu_data/subset_b.tar.gz train/1
  ls -l .gpu_data
  exit 0
fi
data=${DATA:-/tmp/pcam-subset}
if [[ ${1:-} == unpack ]]; then  # there: add whichever archive this call carried
  mkdir -p "$data"
  for a in .gpu_data/subset_*.tar.gz; do [[ -f $a ]] && tar -C "$data" -xzf "$a"; done
  shift
fi
part=${1:-all}
out=${2:-${OUT:-/tmp/pcam_jax_gpu_full_size}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import jax, flax, optax, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__, jax.devices())"
} 2>&1 | tee -a "$out/device.txt"

# configs/cpu_subset.py's augmentation (D4, colour and HED jitter, on the device), read from the
# config itself, as --config.augment.* overrides for the other configs
AUG=($("$PY" -c "from pcam_jax.config import load_config_file
a = load_config_file('configs/cpu_subset.py').augment
print(' '.join(f'--config.augment.{k}={v}' for k, v in a.items()))"))
kv() { grep -m1 "^$1=" /tmp/epoch_run.txt | cut -d= -f2; }  # KEY=VALUE line of the last epoch run

if [[ $part == epoch || $part == all ]]; then
  echo "dtype,batch,images_per_s,epoch_seconds,val_seconds,device_peak_gib" >"$out/epoch.csv"
  extra=${SYNTH_S:-180}  # the first run also writes the synthetic PCam (7 GiB) once
  for run in ${EPOCH_RUNS:-bfloat16:128 bfloat16:256 bfloat16:512}; do
    dtype=${run%%:*} batch=${run##*:}
    echo "== p4mdensenet $dtype batch $batch" | tee -a "$out/epoch.txt"
    limit=$((${EPOCH_S:-150} + extra)) extra=0
    XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$limit" "$PY" bench/epoch.py \
      --config=configs/p4mdensenet.py \
      --steps="${EPOCH_STEPS:-150}" --workdir=/tmp/pcam_jax_epoch \
      ${SYNTH_ARGS:-} --config.batch_size="$batch" --config.compute_dtype="$dtype" \
      --config.data.worker_count="${WORKERS:-8}" "${AUG[@]}" 2>&1 |
      grep -v -i warning | tee /tmp/epoch_run.txt >>"$out/epoch.txt"
    echo "$dtype,$batch,$(kv images_per_s),$(kv epoch_seconds),$(kv val_seconds),$(kv device_peak_gib)" |
      tee -a "$out/epoch.csv"
  done
fi

if [[ $part == train || $part == all ]]; then
  runs=/tmp/gpu_full_size_runs
  rm -rf "$runs" && mkdir -p "$runs"
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  start() {  # label config args...
    local label=$1 config=$2
    shift 2
    mkdir -p "$runs/$label"
    date +%s.%N >"$runs/$label/t0"
    echo "$config $*" >"$runs/$label/args"
    timeout "${RUN_S:-330}" "$PY" bench/gpu_train.py --config="$config" --workdir="$runs/$label" \
      --config.data.source=folder --config.data.root="$data" \
      --config.data.worker_count="${WORKERS:-3}" --config.train_minutes="${TRAIN_MIN:-4}" \
      "$@" >"$runs/$label/train.log" 2>&1 &
  }
  DENSE=(--config.eval_every_steps=250 --config.checkpoint_every_steps=250 "${AUG[@]}")
  start p4mdensenet configs/p4mdensenet.py "${DENSE[@]}" ${TRAIN_ARGS:-}
  start densenet configs/densenet.py "${DENSE[@]}" ${TRAIN_ARGS:-}
  start resnet-2x configs/cpu_subset.py:resnet "--config.model.widths=(32,64,128,256)" ${TRAIN_ARGS:-}
  start p4resnet-2x configs/cpu_subset.py:p4resnet "--config.model.widths=(8,16,32,64)" ${TRAIN_ARGS:-}
  wait
  "$PY" bench/gpu_curve_summary.py "$runs" "$out"
  best=$("$PY" - "$out/gpu_curve.csv" <<'EOF'
import csv, sys
last = {}
for r in csv.DictReader(open(sys.argv[1])):
    last[r["run"]] = float(r["val_auc"])  # rows in step order: the final validation wins
print(max(last, key=last.get) if last else "")
EOF
  )
  if [[ -n $best ]]; then
    echo "best final valid AUC: $best; exporting its last checkpoint (EMA where kept)" |
      tee -a "$out/gpu_logs.txt"
    rm -rf /tmp/gpu_full_size_bundle
    "$PY" -m pcam_jax.cli.export --workdir="$runs/$best" --checkpoint=last \
      --out=/tmp/gpu_full_size_bundle 2>&1 | tail -3 | tee -a "$out/gpu_logs.txt" &&
      tar -C /tmp -cf "$out/bundle.tar" gpu_full_size_bundle
  fi
fi
ls -l "$out"
