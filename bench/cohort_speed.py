"""Benchmark (not a test): pcam-slide on a cohort, in slides per hour at CAMELYON16 size.

    python bench/cohort_speed.py [--slides 4] [--grid 24] [--model=MODEL_DIR] [--out DIR]
                                 [--modes dense windows]

Builds a cohort of --slides synthetic 40x-like slides from REAL PCam valid patches (each a
grid x grid mosaic of its own patches, tumour patches in a central square, upsampled 4x to
0.243 um/px, CAMELYON16's level-0 resolution, written as a JPEG-tiled pyramid with levels 1, 2,
4 and 16, so the model's 0.972 um/px is read at level 2 without resampling, as on CAMELYON16)
and runs ``pcam_jax.wsi.cohort.run_cohort`` over it, as ``pcam-slide FOLDER --out=DIR``
does: the model is loaded once and compiled on the first slide, and each slide after the first
is prepared while its predecessor is predicted; once per --modes (pcam-slide's --mode), in
order, each with a freshly loaded model. Prints per slide its tissue cells, seconds and
cells/s, then the cohort's rate (all cells over the whole run's wall time, model loading
included, and over the slides after the first) and the slides per hour that rate gives for
CAMELYON16-size slides of 300,000 tissue cells.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pcam_jax.data.subset import subset_root

REPO = Path(__file__).resolve().parents[1]

CAMELYON_CELLS = 300_000  # tissue cells of 32 px at 0.972 um/px in a large CAMELYON16 slide
MPP = 0.243  # CAMELYON16's level-0 resolution
LEVELS = (1, 2, 4, 16)


def write_40x_slide(path: Path, image: np.ndarray) -> Path:
    """`image` (at 0.972 um/px) upsampled 4x to 0.243 um/px, as a JPEG-tiled pyramid."""
    big = Image.fromarray(image).resize((image.shape[1] * 4, image.shape[0] * 4), Image.BICUBIC)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level, ds in enumerate(LEVELS):
            res = 1e4 / (MPP * ds)
            tif.write(
                np.asarray(big.reduce(ds) if ds > 1 else big),
                tile=(256, 256),
                photometric="rgb",
                compression="jpeg",
                subfiletype=1 if level else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
            )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--grid", type=int, default=24, help="patches per side of each mosaic")
    ap.add_argument(
        "--model",
        default="bundled:p4resnet",
        help="bundle, workdir or bundled:NAME (default: the bundled p4 ResNet, which runs dense)",
    )
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--modes", nargs="+", default=["dense", "windows"], help="pcam-slide --mode")
    ap.add_argument("--out", type=Path, default=None, help="keep the slides and outputs here")
    args = ap.parse_args()

    import jax

    from pcam_jax import infer
    from pcam_jax.camelyon.synthetic import mosaic, real_patches
    from pcam_jax.wsi.cohort import resolve_slides, run_cohort
    from pcam_jax.wsi.run import SlideSettings

    g = args.grid
    lo, hi = g // 4, g - g // 4
    work = args.out or Path(tempfile.mkdtemp(prefix="cohort_speed."))
    (work / "slides").mkdir(parents=True, exist_ok=True)
    for k in range(args.slides):
        path = work / "slides" / f"slide_{k + 1:03d}.tif"
        if not path.is_file():
            patches, _ = real_patches(
                subset_root(), grid=g, tumour=(slice(lo, hi), slice(lo, hi)), offset=k * g * g // 2
            )
            write_40x_slide(path, mosaic(patches))
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({platform.machine()})"
    print(f"device: {device}; batch {args.batch_size}")
    print(f"{args.slides} slides of {g}x{g} patches at {MPP} um/px")
    for mode in args.modes:
        t0 = time.perf_counter()
        model = infer.load_model(args.model)
        out = work / f"out-{mode}-{time.strftime('%H%M%S')}"
        rows = run_cohort(
            resolve_slides([str(work / "slides")]),
            out,
            model,
            SlideSettings(batch_size=args.batch_size, mode=mode),
            log=lambda line: None,
        )
        wall = time.perf_counter() - t0
        name = model.info.get("model", {}).get("name")
        print(f"\nmode {mode}, model {name}\n")
        print("| slide | tissue cells | seconds | cells/s |")
        print("|---|---:|---:|---:|")
        for r in rows:
            rate = int(r["cells"]) / float(r["seconds"])
            slide, seconds = Path(r["slide"]).name, float(r["seconds"])
            print(f"| {slide} | {int(r['cells']):,} | {seconds:.1f} | {rate:.0f} |")
        cells = sum(int(r["cells"]) for r in rows)
        later = sum(int(r["cells"]) for r in rows[1:]) / sum(float(r["seconds"]) for r in rows[1:])
        whole = cells / wall
        print(
            f"\ncohort ({mode}): {cells:,} cells in {wall:.1f} s wall (model load and compile "
            f"included): {whole:.0f} cells/s -> {3600 / (CAMELYON_CELLS / whole):.1f} slides/hour "
            f"at {CAMELYON_CELLS:,} cells; slides after the first: {later:.0f} cells/s -> "
            f"{3600 / (CAMELYON_CELLS / later):.1f} slides/hour"
        )


if __name__ == "__main__":
    main()
