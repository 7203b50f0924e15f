"""The folders pcam-slide writes, named in one place (as ``workdir.py`` names a run directory).

A slide folder (``pcam-slide SLIDE --out DIR``, or ``DIR/STEM/`` of a cohort) holds:

    tiles.csv          x, y, width, height (level-0 pixels) and p_tumour of every tissue cell
    probabilities.npy  the cell map, float32 (rows, cols), NaN where there is no tissue
    heatmap.png        p(tumour) over the slide's thumbnail
    tumour.geojson     the cells at or above the threshold as QuPath annotations (level-0 px)
    detections.csv     lesion detections, CAMELYON16's format: probability,X,Y, no header
    summary.json       slide, model, mode, geometry, tissue, timings, scores, detection settings,
                       and the input it was computed from (``wsi.provenance``)

It is written to a temporary folder beside it and renamed into place when complete, so a slide
folder with summary.json is finished (``finished_summary``). A cohort folder holds
cohort.json (the run's settings and model), slides.csv (one row per slide), slide_scores.csv
(CAMELYON16's image_name,probability) and a slide folder per slide, named by its file stem.
``pcam_jax.camelyon`` reads both back by these names. Imports: nothing of the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# one slide
TILES_CSV = "tiles.csv"
PROBABILITIES_NPY = "probabilities.npy"
HEATMAP_PNG = "heatmap.png"
TUMOUR_GEOJSON = "tumour.geojson"
DETECTIONS_CSV = "detections.csv"
SUMMARY_JSON = "summary.json"
SLIDE_FILES = (TILES_CSV, PROBABILITIES_NPY, HEATMAP_PNG, TUMOUR_GEOJSON, DETECTIONS_CSV,
               SUMMARY_JSON)  # fmt: skip

# a cohort
COHORT_JSON = "cohort.json"
SLIDES_CSV = "slides.csv"
SLIDE_SCORES_CSV = "slide_scores.csv"


def slide_folder(cohort: Path, slide: Path) -> Path:
    """The folder of `slide`'s outputs in the cohort folder `cohort`: its file stem."""
    return cohort / slide.stem


def finished_summary(folder: Path) -> dict[str, Any] | None:
    """summary.json of a finished slide folder, or None when it is not finished."""
    try:
        return json.loads((folder / SUMMARY_JSON).read_text())
    except (OSError, ValueError):
        return None
