"""`pcam-slide`: tumour probability maps and lesion detections of whole-slide images
(see pcam_jax.wsi.run and pcam_jax.wsi.cohort).

    pcam-slide SLIDE --out=DIR [--model=MODEL_DIR|WORKDIR|bundled:NAME] [--mpp=F] [--stride=32]
               [--tissue_threshold=0.5] [--threshold=0.5] [--batch_size=256] [--tta]
               [--nms_floor=0.5] [--nms_radius_um=187] [--mode=auto|windows|dense]
    pcam-slide SLIDE... | FOLDER | 'GLOB' | LIST.txt | LIST.csv --out=DIR [same flags]

SLIDE is anything OpenSlide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...). For one
SLIDE, DIR (new, or an empty folder) receives, all at once at the end:

  tiles.csv          x,y,width,height,p_tumour per tissue cell (level-0 pixels)
  probabilities.npy  float32 (rows, cols) cell map, NaN where there is no tissue
  heatmap.png        the map over the slide's thumbnail, with a colour bar
  tumour.geojson     polygons of p(tumour) >= --threshold, level-0 pixels (QuPath: File >
                     Import objects)
  detections.csv     lesion detections, CAMELYON16 format: probability,X,Y per line (level-0
                     pixels, no header): local maxima >= --nms_floor, --nms_radius_um apart
  summary.json       slide score (max and top-k mean), tumour area in mm2, cells, seconds,
                     cells/s, the level and resolutions used, the mode that ran

--mode=windows runs every cell's 96-pixel window on its own, as pcam-predict runs a patch;
--mode=dense runs blocks of 16x16 cells through the network once and reads the head out at every
cell (each pixel convolved once: several times faster; for a padded network a cell then sees its
neighbours, which changes its value; BENCHMARKS.md measures both). --mode=auto (the default) is
dense for a model whose dense pass equals its windows (the valid ResNets, such as
bundled:p4resnet-valid) and windows for any other. Without --model, pcam-slide runs
bundled:p4resnet-valid (densely); --model=bundled:effnet-lite0 (the default of pcam-predict, the
best patch model on valid) or bundled:p4resnet run window by window, several times slower
(BENCHMARKS.md, "Bundled models").

For a cohort (several slides, a folder, a glob or a list), DIR gets one such folder per slide
(named by the file's stem), slides.csv (status, scores, area, cells, seconds and error per
slide), slide_scores.csv (CAMELYON16 format) and cohort.json. The model is loaded and compiled
once. Rerunning the same command resumes: finished slides are kept (a slide file changed since,
or given another --mpp, stops the run before any work, naming the folder to remove), failed and
unfinished ones are redone. A slide that fails is recorded in slides.csv and the run goes on;
the exit status is 1 when any slide failed. Several processes (or SLURM array tasks:
launch/slide_array.sbatch) may run the same cohort into one DIR at once: each claims a slide
before computing it. Evaluate against CAMELYON16 ground truth with pcam-camelyon-eval.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from pcam_jax.cli import common
from pcam_jax.infer.bundle import DEFAULT_SLIDE_BUNDLED
from pcam_jax.infer.load import load_model
from pcam_jax.wsi.cohort import (
    check_cohort_dir,
    check_kept_slides,
    given_mpp,
    is_cohort,
    resolve_slides,
    run_cohort,
)
from pcam_jax.wsi.detections import NMS_FLOOR, NMS_RADIUS_UM
from pcam_jax.wsi.outputs import prepare_out_dir
from pcam_jax.wsi.predictors import MODES
from pcam_jax.wsi.run import SlideSettings, run_slide
from pcam_jax.wsi.slide import MPP_RANGE

_MPP = flags.DEFINE_float(
    "mpp",
    None,
    "Level-0 microns per pixel, for slides that lack it.",
    lower_bound=MPP_RANGE[0],
    upper_bound=MPP_RANGE[1],
)
_STRIDE = flags.DEFINE_integer(
    "stride", 32, "Cell size in model pixels (window stride).", lower_bound=1, upper_bound=96
)
_TISSUE = flags.DEFINE_float(
    "tissue_threshold",
    0.5,
    "Share of a cell's area that must be tissue for it to be predicted.",
    lower_bound=0.0,
    upper_bound=1.0,
)
_THRESHOLD = flags.DEFINE_float(
    "threshold",
    0.5,
    "p(tumour) of the GeoJSON regions and area.",
    lower_bound=0.0,
    upper_bound=1.0,
)
_TOP_K = flags.DEFINE_integer(
    "top_k", 10, "Cells averaged for the top-k slide score.", lower_bound=1
)
_NMS_FLOOR = flags.DEFINE_float(
    "nms_floor",
    NMS_FLOOR,
    "Lowest p(tumour) of a lesion detection (detections.csv).",
    lower_bound=0.0,
    upper_bound=1.0,
)
_NMS_RADIUS = flags.DEFINE_float(
    "nms_radius_um",
    NMS_RADIUS_UM,
    "Non-maximum suppression radius of the detections, in microns.",
    lower_bound=0.0,
)
_MODE = flags.DEFINE_enum(
    "mode",
    "auto",
    list(MODES),
    "auto: dense where a model's dense pass equals its windows (the valid ResNets), windows "
    "otherwise; windows: each cell's 96-pixel window on its own, as pcam-predict runs a patch; "
    "dense: one fully convolutional pass per block of cells, the head read out at every cell "
    "(the ResNets).",
)
common.check_finite("mpp")
common.check_finite("nms_radius_um")


def settings() -> SlideSettings:
    """The slide settings the flags give."""
    return SlideSettings(
        mpp=_MPP.value,
        stride=_STRIDE.value,
        tissue_threshold=_TISSUE.value,
        threshold=_THRESHOLD.value,
        top_k=_TOP_K.value,
        batch_size=common.batch_size(),
        tta=common.TTA.value,
        nms_floor=_NMS_FLOOR.value,
        nms_radius_um=_NMS_RADIUS.value,
        mode=_MODE.value,
    )


def slide_model() -> str:
    """--model, or the bundle whose dense map equals its windows (DEFAULT_SLIDE_BUNDLED)."""
    return common.MODEL.value or f"bundled:{DEFAULT_SLIDE_BUNDLED}"


def run_many(specs: Sequence[str], out: str) -> None:
    """pcam-slide on a cohort; exits 1 when a slide failed."""
    slides = resolve_slides(specs)
    check_cohort_dir(out)  # before the model loads
    check_kept_slides(out, given_mpp(slides, settings()))
    model = load_model(slide_model(), common.CHECKPOINT.value)
    rows = run_cohort(slides, out, model, settings(), progress=common.PROGRESS.value)
    failed = [r for r in rows if r["status"] != "done"]
    print(
        f"pcam-slide: {len(rows) - len(failed)} of {len(rows)} slides done, {len(failed)} "
        f"failed -> {out}/slides.csv"
    )
    if failed:
        sys.exit(1)


def main(argv: Sequence[str]) -> None:
    if len(argv) < 2 or not common.OUT.value:
        sys.exit(
            "pcam-slide: error: give a SLIDE (or several, a folder, a glob, a list) and --out=DIR"
        )
    if is_cohort(argv[1:]):
        run_many(argv[1:], common.OUT.value)
        return
    prepare_out_dir(common.OUT.value)  # before the model loads
    model = load_model(slide_model(), common.CHECKPOINT.value)
    summary = run_slide(
        argv[1], common.OUT.value, model, settings(), progress=common.PROGRESS.value
    )
    print(
        f"pcam-slide: {summary['tissue_cells']} tissue cells in {summary['seconds']:.1f} s "
        f"({summary['cells_per_second']:.0f} cells/s, {summary['mode']}) at level "
        f"{summary['level']} ({summary['level_mpp']:.3f} um/px); score max "
        f"{summary['score_max']:.3f}, tumour area {summary['tumour_area_mm2']:.3f} mm2 -> "
        f"{common.OUT.value}"
    )


def run() -> None:
    """Console-script entry point."""
    common.run_binary(main, __doc__, [__name__], shared=common.PREDICTION_FLAGS)


if __name__ == "__main__":
    run()
