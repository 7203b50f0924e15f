"""`pcam-slide`: a tumour probability map of a whole-slide image (see pcam_jax.infer.slide).

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

from pcam_jax.cli import common
from pcam_jax.errors import PcamError
from pcam_jax.infer.load import load_model
from pcam_jax.infer.slide import MPP_RANGE
from pcam_jax.infer.slide_outputs import prepare_out_dir, run_slide

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
common.check_finite("mpp")


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2 or not common.OUT.value:
        sys.exit("pcam-slide: error: give one SLIDE and --out=DIR")
    try:
        prepare_out_dir(common.OUT.value)  # before the model loads
        model = load_model(common.MODEL.value, common.CHECKPOINT.value)
        summary = run_slide(
            argv[1],
            common.OUT.value,
            model,
            mpp=_MPP.value,
            stride=_STRIDE.value,
            tissue_threshold=_TISSUE.value,
            threshold=_THRESHOLD.value,
            top_k=_TOP_K.value,
            batch_size=common.batch_size(),
            tta=common.TTA.value,
            progress=common.PROGRESS.value,
        )
    except PcamError as e:
        sys.exit(f"pcam-slide: error: {e}")
    print(
        f"pcam-slide: {summary['tissue_cells']} tissue cells in {summary['seconds']:.1f} s "
        f"({summary['cells_per_second']:.0f} cells/s) at level {summary['level']} "
        f"({summary['level_mpp']:.3f} um/px); score max {summary['score_max']:.3f}, "
        f"tumour area {summary['tumour_area_mm2']:.3f} mm2 -> {common.OUT.value}"
    )


def run() -> None:
    """Console-script entry point."""
    common.run_binary(main, __doc__, [__name__], shared=common.PREDICTION_FLAGS)


if __name__ == "__main__":
    run()
