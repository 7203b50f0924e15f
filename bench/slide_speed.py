"""Benchmark (not a test): pcam-slide's speed, in tissue cells per second, with a model bundle.

    python bench/slide_speed.py [--model=MODEL_DIR] [--grid 24] [--out runs/slide_speed]
                                [--heatmap docs/results/heatmap.png]

Builds two synthetic slides from REAL PCam valid patches (pcam_jax.camelyon.synthetic: a grid x
grid mosaic, tumour patches in a central rectangle, white margin): one at the model's 0.972
um/px with lossless tiles (read without resampling) and one 20x-like at 0.486 um/px with JPEG
tiles (read at level 0 and resampled by 2). Each is run twice through
``pcam_jax.infer.slide_outputs.run_slide`` with the same loaded model: the first run includes
compiling the predict function, the second is the steady state. Prints a markdown table (cells,
seconds, cells/s, and the time a CAMELYON16-size slide of 300,000 tissue cells would take at
that rate) and the cell-level AUC against the known tumour rectangle, and copies the 20x slide's
heatmap.png to --heatmap when given.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

CAMELYON_CELLS = 300_000  # tissue cells of 32 px at 0.972 um/px in a large CAMELYON16 slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="bundle or workdir (default: the bundled model)")
    ap.add_argument("--grid", type=int, default=24, help="patches per side of the mosaic")
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None, help="keep the slides and outputs here")
    ap.add_argument("--heatmap", type=Path, default=None)
    args = ap.parse_args()

    import jax

    from pcam_jax import infer
    from pcam_jax.camelyon.synthetic import MARGIN, mosaic, real_patches, write_slide
    from pcam_jax.data.subset import subset_root
    from pcam_jax.infer.metrics import binary_metrics
    from pcam_jax.infer.slide_outputs import SlideSettings, run_slide

    g = args.grid
    lo, hi = g // 4, g - g // 4
    patches, labels = real_patches(subset_root(), grid=g, tumour=(slice(lo, hi), slice(lo, hi)))
    image = mosaic(patches)
    model = infer.load_model(args.model)
    work = args.out or Path(tempfile.mkdtemp(prefix="slide_speed."))
    work.mkdir(parents=True, exist_ok=True)
    big = np.asarray(Image.fromarray(image).resize((image.shape[1] * 2,) * 2, Image.BICUBIC))
    slides = {
        "0.972 um/px, lossless tiles": write_slide(work / "x10.tif", image, 0.972, "zlib"),
        "0.486 um/px (20x-like), JPEG tiles": write_slide(work / "x20.tif", big, 0.486, "jpeg"),
    }
    r, c = np.divmod(np.arange(g * g), g)
    rows, cols = (MARGIN + r * 96 + 32) // 32, (MARGIN + c * 96 + 32) // 32
    cpu = platform.processor() or platform.machine()
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({cpu})"
    print(f"model: {model.info.get('model', {}).get('name')} from {model.info['source']}")
    print(f"device: {device}; batch {args.batch_size}\n")
    print("| slide | run | tissue cells | seconds | cells/s | 300,000 cells | cell AUC |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, path in slides.items():
        for run in ("first (compiles)", "second"):
            out = work / f"{path.stem}_{run.split()[0]}"
            shutil.rmtree(out, ignore_errors=True)
            s = run_slide(path, out, model, SlideSettings(batch_size=args.batch_size))
            probs = np.load(out / "probabilities.npy")[rows, cols]
            keep = np.isfinite(probs)
            auc = binary_metrics(labels.ravel()[keep], probs[keep], n_bootstrap=0)["auc"]
            minutes = CAMELYON_CELLS / s["cells_per_second"] / 60
            print(
                f"| {name} | {run} | {s['tissue_cells']:,} | {s['seconds']:.1f} | "
                f"{s['cells_per_second']:.0f} | {minutes:.0f} min | {auc:.3f} |"
            )
            (out / "bench.json").write_text(json.dumps({"device": device, **s}, indent=2))
    if args.heatmap:
        shutil.copy(work / "x20_second" / "heatmap.png", args.heatmap)
        print(f"\nheatmap -> {args.heatmap}")


if __name__ == "__main__":
    main()
