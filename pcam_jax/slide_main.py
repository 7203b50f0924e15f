"""`pcam-slide`: a tumour probability map of a whole-slide image (see pcam_jax.slide).

    pcam-slide SLIDE --out=DIR [--model=MODEL_DIR|WORKDIR] [--mpp=F] [--stride=32]
               [--tissue_threshold=0.5] [--threshold=0.5] [--batch_size=256] [--tta]

SLIDE is anything OpenSlide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...). DIR (new, or
an empty folder) receives, all at once at the end:

  tiles.csv          x,y,width,height,p_tumour per tissue cell (level-0 pixels)
  probabilities.npy  float32 (rows, cols) cell map, NaN where there is no tissue
  heatmap.png        the map over the slide's thumbnail, with a colour bar
  tumour.geojson     polygons of p(tumour) >= --threshold, level-0 pixels (QuPath: File >
                     Import objects)
  summary.json       slide score (max and top-k mean), tumour area in mm2, cells, seconds,
                     cells/s, the level and resolutions used
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from pcam_jax import inference
from pcam_jax.binaries import run_binary
from pcam_jax.errors import PcamError
from pcam_jax.slide import run_slide

_OUT = flags.DEFINE_string("out", None, "Output folder (new or empty).")
_MODEL = flags.DEFINE_string(
    "model", None, "A model bundle or pcam-train workdir (default: the bundled model)."
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "For a workdir: best, last or a step.")
_MPP = flags.DEFINE_float("mpp", None, "Level-0 microns per pixel, for slides that lack it.")
_STRIDE = flags.DEFINE_integer("stride", 32, "Cell size in model pixels (window stride).")
_TISSUE = flags.DEFINE_float(
    "tissue_threshold", 0.5, "Share of a cell's area that must be tissue for it to be predicted."
)
_THRESHOLD = flags.DEFINE_float("threshold", 0.5, "p(tumour) of the GeoJSON regions and area.")
_TOP_K = flags.DEFINE_integer("top_k", 10, "Cells averaged for the top-k slide score.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Windows per device batch.")
_TTA = flags.DEFINE_bool("tta", False, "Average over the 8 D4 transforms of each window.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (cells/s).")


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2 or not _OUT.value:
        sys.exit("pcam-slide: error: give one SLIDE and --out=DIR")
    try:
        model = inference.load_model(_MODEL.value, _CHECKPOINT.value)
        summary = run_slide(
            argv[1],
            _OUT.value,
            model,
            mpp=_MPP.value,
            stride=_STRIDE.value,
            tissue_threshold=_TISSUE.value,
            threshold=_THRESHOLD.value,
            top_k=_TOP_K.value,
            batch_size=_BATCH.value,
            tta=_TTA.value,
            progress=_PROGRESS.value,
        )
    except PcamError as e:
        sys.exit(f"pcam-slide: error: {e}")
    print(
        f"pcam-slide: {summary['tissue_cells']} tissue cells in {summary['seconds']:.1f} s "
        f"({summary['cells_per_second']:.0f} cells/s) at level {summary['level']} "
        f"({summary['level_mpp']:.3f} um/px); score max {summary['score_max']:.3f}, "
        f"tumour area {summary['tumour_area_mm2']:.3f} mm2 -> {_OUT.value}"
    )


def run() -> None:
    """Console-script entry point."""
    run_binary(main, __doc__, [__name__])


if __name__ == "__main__":
    run()
