"""`pcam-camelyon-eval`: slide-level AUC and lesion-level FROC of a pcam-slide cohort against
CAMELYON16 ground truth (see pcam_jax.camelyon).

    pcam-camelyon-eval --predictions=DIR --ground_truth=GT_DIR --out=OUT
                       [--normal=reference.csv] [--slide_score=file] [--pixel_um=7.776]
                       [--resolution=official|slide] [--mask_values=official|nonzero]
                       [--bootstrap=1000] [--seed=0]

DIR is a folder written by `pcam-slide SLIDES... --out=DIR`: one sub-folder per slide (its
summary.json and detections.csv, `probability,X,Y` per line), slide_scores.csv and slides.csv
(failed slides are skipped with a warning). GT_DIR holds each tumour slide's ground truth, the
first of STEM.xml (ASAP), STEM.geojson, STEM.json, STEM_mask.tif, STEM.tif (a mask).
Without --normal a slide without a ground-truth file is normal; with it (a list of normal
stems, or CAMELYON16's reference.csv with Tumor/Normal), the list decides and an unlisted slide
without ground truth is skipped with a warning.

The FROC is the challenge's (Evaluation_FROC.py): lesions dilated by 37.5 um, isolated tumour
cells (major axis < 275 um) ignored, on a mask of about --pixel_um microns per pixel (the
official level 5: 7.776 um); by default as the script computes it, every slide at 0.243 um/px
(--resolution=slide: each slide's own MPP) and a mask pixel tumour at 255 only
(--mask_values=nonzero: any value above 0). The score is the mean sensitivity at 1/4, 1/2, 1,
2, 4, 8 average false positives per slide, interpolated on the curve as NCRF and MONAI do (the
script draws the curve and computes no score). froc.json states the rules used.

OUT (new, or an empty folder) receives, all at once: slide_auc.json (AUC, bootstrap 95% CI,
slides), roc.png, froc.json (score, the six sensitivities, per-slide counts), froc.png and
froc_curve.csv.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from pcam_jax.camelyon.evaluate import MASK_VALUES, RESOLUTIONS, Rules
from pcam_jax.camelyon.report import run_camelyon_eval, summary_line
from pcam_jax.cli import common

_GROUND_TRUTH = flags.DEFINE_string(
    "ground_truth", None, "A folder of ground truth: STEM.xml, STEM.geojson or STEM_mask.tif."
)
_NORMAL = flags.DEFINE_string(
    "normal",
    None,
    "A list of normal slide stems, or CAMELYON16's reference.csv (STEM,Tumor|Normal,...).",
)
_SLIDE_SCORE = flags.DEFINE_string(
    "slide_score",
    "file",
    "The slide score: file (DIR/slide_scores.csv, else score_max) or a summary.json key "
    "(score_max, score_top10_mean).",
)
_PIXEL_UM = flags.DEFINE_float(
    "pixel_um",
    7.776,
    "Target pixel size of the evaluation mask, microns (the official level 5 of 0.243 um).",
    lower_bound=0.0,
)
common.check_finite("pixel_um")
_RESOLUTION = flags.DEFINE_enum(
    "resolution",
    "official",
    list(RESOLUTIONS),
    "official: every slide's level 0 at 0.243 um/px, as the challenge's script (comparable with "
    "published FROCs); slide: each slide's own MPP (summary.json level0_mpp).",
)
_MASK_VALUES = flags.DEFINE_enum(
    "mask_values",
    "official",
    list(MASK_VALUES),
    "official: a mask TIFF's pixel is tumour at 255 only, as the challenge's script; nonzero: "
    "at any value above 0 (masks written 0/1).",
)

PROG = "pcam-camelyon-eval"


def _warn(line: str) -> None:
    print(f"{PROG}: warning: {line}", file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"{PROG}: error: unexpected arguments: {' '.join(argv[1:])}")
    missing = [
        f"--{name}"
        for name, value in (
            ("predictions", common.PREDICTIONS.value),
            ("ground_truth", _GROUND_TRUTH.value),
            ("out", common.OUT.value),
        )
        if not value
    ]
    if missing:
        sys.exit(f"{PROG}: error: {', '.join(missing)} required; see --help")
    result = run_camelyon_eval(
        common.PREDICTIONS.value,
        _GROUND_TRUTH.value,
        common.OUT.value,
        normal=_NORMAL.value,
        rules=Rules(_RESOLUTION.value, _MASK_VALUES.value, _PIXEL_UM.value),
        slide_score=_SLIDE_SCORE.value,
        n_bootstrap=common.BOOTSTRAP.value,
        seed=common.SEED.value,
        log=_warn,
    )
    print(f"{PROG}: {summary_line(result)} -> {common.OUT.value}")


def run() -> None:
    """Console-script entry point."""
    common.run_binary(main, __doc__, [__name__], shared=("predictions", "out", "bootstrap", "seed"))


if __name__ == "__main__":
    run()
