"""Benchmark (not a test): pcam-slide's speed in tissue cells per second, dense against window
by window, with the time split and what dense inference changes in the map.

    python bench/slide_speed.py [--model=MODEL_DIR] [--grid 24] [--out runs/slide_speed]
                                [--heatmap docs/results/heatmap.png]

Builds two synthetic slides from REAL PCam valid patches (pcam_jax.camelyon.synthetic: a grid x
grid mosaic, tumour patches in a central rectangle, white margin): one at the model's 0.972
um/px with lossless tiles (read without resampling) and one 20x-like at 0.486 um/px with JPEG
tiles (read at level 0 and resampled by 2). Each is run through ``pcam_jax.wsi.run.run_slide``
in both modes (``dense`` and ``windows``), twice each with the same loaded model: the first run
includes compiling, the second is the steady state. Prints, per slide and mode:

- tissue cells, seconds, cells/s and the minutes a CAMELYON16-size slide of 300,000 tissue
  cells takes at that rate;
- the cell-level AUC against the known tumour rectangle (the labelled centre cell of each
  mosaic patch);
- the time split of the steady state: ``prepare`` (open, thumbnail, tissue map), ``read``
  (every tissue block through ``block_stream``: OpenSlide's read_region, which decodes the
  tiles, and resampling, on its threads), ``model`` (the predictor over the blocks already read)
  and ``outputs`` (the six files), each measured on its own;

then the per-cell |p_dense - p_windows| distribution (median, 95th and 99th percentile, max)
over every tissue cell. Copies the 20x slide's heatmap.png (windows) to --heatmap when given.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CAMELYON_CELLS = 300_000  # tissue cells of 32 px at 0.972 um/px in a large CAMELYON16 slide
MODES = ("dense", "windows")


def time_split(path: Path, model, settings, out: Path) -> dict[str, float]:
    """Seconds of each stage of one slide, measured on its own (see the module docstring)."""
    from pcam_jax.wsi import outputs
    from pcam_jax.wsi.predictors import block_stream, choose_predictor
    from pcam_jax.wsi.slide import tissue_blocks

    prepared = settings.prepare(path, model)
    try:
        geom = prepared.geometry
        t0 = time.perf_counter()
        predictor = choose_predictor(model, settings.mode, geom.cell_model, settings.batch_size)
        n = predictor.block
        blocks = list(block_stream(prepared.slide, geom, tissue_blocks(prepared.tissue, n), n))
        t1 = time.perf_counter()
        probs = np.full((geom.rows, geom.cols), np.nan, np.float32)
        for cells, p in predictor.predict(iter(blocks), geom):
            probs[cells[:, 0], cells[:, 1]] = p
        t2 = time.perf_counter()
    finally:
        prepared.close()
    result = outputs.SlideResult(
        probs,
        geom,
        prepared.tissue_threshold,
        prepared.saturation_threshold,
        prepared.seconds + t2 - t0,
        prepared.thumbnail,
        prepared.thumbnail_per_px,
        predictor.mode,
    )
    t3 = time.perf_counter()
    outputs.write_outputs(
        out,
        result,
        path,
        model,
        threshold=settings.threshold,
        top_k=settings.top_k,
        nms_floor=settings.nms_floor,
        nms_radius_um=settings.nms_radius_um,
        provenance=prepared.provenance(),
    )
    return {
        "prepare": prepared.seconds,
        "read": t1 - t0,
        "model": t2 - t1,
        "outputs": time.perf_counter() - t3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        default="bundled:p4resnet",
        help="bundle, workdir or bundled:NAME (default: the bundled p4 ResNet, which runs dense)",
    )
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
    from pcam_jax.wsi.run import SlideSettings, run_slide

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
    print(
        "| slide | mode | run | tissue cells | seconds | cells/s | 300,000 cells | cell AUC |"
        " prepare / read / model / outputs (s) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    maps: dict[tuple[str, str], np.ndarray] = {}
    for name, path in slides.items():
        for mode in MODES:
            settings = SlideSettings(batch_size=args.batch_size, mode=mode)
            for run in ("first (compiles)", "second"):
                out = work / f"{path.stem}_{mode}_{run.split()[0]}"
                shutil.rmtree(out, ignore_errors=True)
                s = run_slide(path, out, model, settings)
                probs = np.load(out / "probabilities.npy")
                maps[name, mode] = probs
                centre = probs[rows, cols]
                keep = np.isfinite(centre)
                auc = binary_metrics(labels.ravel()[keep], centre[keep], n_bootstrap=0)["auc"]
                minutes = CAMELYON_CELLS / s["cells_per_second"] / 60
                split = ""
                if run == "second":
                    split_out = work / f"{path.stem}_{mode}_split"
                    shutil.rmtree(split_out, ignore_errors=True)
                    t = time_split(path, model, settings, split_out)
                    stages = ("prepare", "read", "model", "outputs")
                    split = " / ".join(f"{t[k]:.2f}" for k in stages)
                    s["time_split"] = t
                print(
                    f"| {name} | {s['mode']} | {run} | {s['tissue_cells']:,} | "
                    f"{s['seconds']:.1f} | {s['cells_per_second']:.0f} | {minutes:.1f} min | "
                    f"{auc:.4f} | {split} |"
                )
                (out / "bench.json").write_text(json.dumps({"device": device, **s}, indent=2))
    print("\n| slide | cells | median abs dp | p95 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in slides:
        dense, windows = maps[name, "dense"], maps[name, "windows"]
        finite = np.isfinite(dense) & np.isfinite(windows)
        dp = np.abs(dense[finite] - windows[finite])
        q = np.quantile(dp, [0.5, 0.95, 0.99])
        print(f"| {name} | {dp.size:,} | {q[0]:.4f} | {q[1]:.4f} | {q[2]:.4f} | {dp.max():.4f} |")
    if args.heatmap:
        shutil.copy(work / "x20_windows_second" / "heatmap.png", args.heatmap)
        print(f"\nheatmap -> {args.heatmap}")


if __name__ == "__main__":
    main()
