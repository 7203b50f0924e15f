#!/usr/bin/env bash
# bench/vs_escnn.py on a GPU machine that has jax (CUDA), flax, optax, numpy 2 and torch (CUDA)
# but no escnn and no network: the escnn side's pure-python wheels come from .whl/ in the repo
# root (escnn 1.0.11, pymanopt 2.2.1, autograd 1.9.1; not committed, see
# docs/escnn_reference.md) and are unpacked into a directory that only the escnn child sees.
# lie_learn (compiled against numpy<2) is replaced by the stand-in in
# bench/escnn_reference/lie_learn_stub (escnn's 2D groups never call it).
#
#   bash bench/gpu_vs_escnn.sh            # writes $OUT/vs_escnn_gpu.txt when $OUT is set
#
# Environment: PYTHON (default python3; runs the driver and the jax child), REF_PYTHON (the
# escnn child's interpreter, default $PYTHON), ESCNN_SITE (default /tmp/escnn_site), ROUNDS
# (default 2), ARCHS (default "p4mcnn p4mdensenet-cpu"), DEVICE (default gpu; cpu for a local
# dry run), VS_ARGS (extra vs_escnn.py arguments, appended). About 3 minutes on one H100,
# compiles included (estimate; each child starts CUDA afresh).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
ref_py=${REF_PYTHON:-$py}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this checkout, for the jax side
device=${DEVICE:-gpu}
site=${ESCNN_SITE:-/tmp/escnn_site}
rounds=${ROUNDS:-2}
archs=${ARCHS:-p4mcnn p4mdensenet-cpu}

shopt -s nullglob
wheels=(.whl/escnn-*.whl .whl/pymanopt-*.whl .whl/autograd-*.whl)
if [ "${#wheels[@]}" -ne 3 ]; then
  echo "gpu_vs_escnn.sh: expected the escnn, pymanopt and autograd wheels in .whl/" >&2
  exit 2
fi
mkdir -p "$site"
# Pure-python wheels are zip files: unpack them (no pip or network needed on the machine).
"$py" - "$site" "${wheels[@]}" <<'EOF'
import sys, zipfile
for w in sys.argv[2:]:
    zipfile.ZipFile(w).extractall(sys.argv[1])
EOF

out=/dev/null
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  out="$OUT/vs_escnn_gpu.txt"
fi
{
  echo "# bench/gpu_vs_escnn.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$py" -c "import jax; print('jax', jax.__version__, jax.devices())"
  "$ref_py" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
  # shellcheck disable=SC2086
  "$py" bench/vs_escnn.py --device "$device" --ref-python "$ref_py" \
    --ref-path "$site:$PWD/bench/escnn_reference/lie_learn_stub" \
    --rounds "$rounds" --train-steps 10 --eval-steps 10 --warmup 3 --plain-init 0 \
    --archs $archs --timeout 300 --keep-going ${VS_ARGS:-}
} 2>&1 | tee "$out"
