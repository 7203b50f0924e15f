#!/usr/bin/env bash
# GPU check (not a test): on a CUDA machine whose python3 has jax[cuda], flax, optax and
# pytest, run the exactness tests of the group layers and models on the GPU, then the
# model table (bench/models.py) in float32 and bfloat16 at batch 64.
#
#   bash bench/gpu_check.sh [OUTDIR]        # default: $OUT or /tmp/pcam_jax_gpu_check
#
# Each part has its own time limit, so one slow part cannot eat the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/pcam_jax_gpu_check}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$out/gpu.txt"
# exactness on the GPU (the tests compute at highest matmul precision)
timeout "${TESTS_S:-240}" python3 -m pytest -q -p no:cacheprovider --noconftest \
  tests/test_groups.py tests/test_layers.py tests/test_models.py 2>&1 | tail -15 | tee "$out/tests.txt"
for dtype in float32 bfloat16; do
  timeout "${MODELS_S:-200}" python3 bench/models.py --batch 64 --reps 20 --dtype "$dtype" \
    --names ${MODELS:-p4mdensenet densenet p4mcnn cnn p4densenet p4cnn p4mallcnn allcnn} \
    2>&1 | grep -v -i warning | tee "$out/models_$dtype.txt"
done
