"""Benchmark (not a test): time per patch of each attribution method (pcam_jax.explain.attribution).

    python bench/attribution_speed.py [--model=bundled:p4resnet] [--patches 64] [--reps 3]

Loads the model as pcam-explain does (default: the bundled p4 ResNet, whose figures BENCHMARKS
gives), takes the first --patches tumour patches of the real subset's valid split
(../shared/data/pcam-subset or PCAM_SUBSET_ROOT), and times ``attribution.attribute`` with its
defaults for each method: the first call (compilation included) and the median of --reps
further calls, divided by the number of patches. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from pcam_jax.data.subset import subset_root

REPO = Path(__file__).resolve().parents[1]
SUBSET = subset_root()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled:p4resnet", help="bundle, workdir or bundled:NAME")
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import jax
    from PIL import Image

    from pcam_jax import infer
    from pcam_jax.explain import attribution

    files = sorted((SUBSET / "valid" / "1").glob("*.jpg"))[: args.patches]
    if len(files) < args.patches:
        raise SystemExit(f"{SUBSET}/valid/1: fewer than {args.patches} patches")
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    model = infer.load_model(args.model)
    print(
        f"model {model.config.model.name} ({args.model}), "
        f"{len(images)} patches, jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{os.cpu_count()} cores"
    )
    print("| method | gradients per patch | first call s (compile) | ms per patch |")
    print("|---|---:|---:|---:|")
    for method in attribution.METHODS:
        t0 = time.perf_counter()
        attribution.attribute(model, images, method)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            attribution.attribute(model, images, method)
            times.append(time.perf_counter() - t0)
        per = 1000 * statistics.median(times) / len(images)
        rows = attribution.rows_per_patch(method)
        print(f"| {method} | {rows} | {first:.1f} | {per:.1f} |", flush=True)


if __name__ == "__main__":
    main()
