"""pcam-camelyon-eval's library: a pcam-slide cohort scored against CAMELYON16 ground truth,
slide-level AUC and lesion-level FROC (``froc``), written by ``report``. The predictions folder
and how it is read: ``predictions``.

Ground truth (GROUND_TRUTH, a folder)
-------------------------------------
A slide's file is the first of these that exists, names compared without case:
``STEM.xml`` (ASAP), ``STEM.geojson``, ``STEM.json`` (GeoJSON), ``STEM_mask.tif``,
``STEM_mask.tiff`` (CAMELYON16's ``Test_001_Mask.tif``), ``STEM.tif``, ``STEM.tiff`` (masks).

Which slides are tumour
-----------------------
Without ``normal``: a slide with a ground-truth file is a tumour slide, one without is normal
(the challenge script's rule). With ``normal``, a file of one normal slide stem per line (or per
first CSV column), or CAMELYON16's reference.csv (``Test_001,Tumor,...``, ``Test_002,Normal``):
a slide listed Normal is normal (a ground-truth file for it is an error), one listed Tumor
must have a ground-truth file (an error otherwise), and an unlisted slide is tumour when it has a
ground-truth file and is skipped with a warning when it has none. Ground-truth files and listed
slides that have no predictions are reported in a warning and not evaluated (the FROC averages
over the slides evaluated, as the script averages over its result files).

Rules (``Rules``; by default the challenge script's, so that a FROC compares with published ones)
-----------------------------------------------------------------------------------------------
- resolution: "official" takes every slide's level 0 to be 0.243 um/px, as Evaluation_FROC.py
  does (a slide whose summary.json says otherwise is evaluated so, with a warning); "slide" takes
  summary.json's level0_mpp, the slide's own (CAMELYON16's Utrecht slides are about 0.226).
- mask_values: "official" counts a mask pixel as tumour only at 255 (the script measures the
  distance to the 255 pixels, so a grey edge left by resampling a mask's level is background
  there); "nonzero" counts any value above 0 (masks written 0/1).
- pixel_um: the evaluation mask's target pixel, 7.776 um (the script's level 5 of 0.243 um).
- The score: ``froc.SCORE_RULE`` (the interpolation NCRF and MONAI use).

Geometry
--------
With resolution m (above), the evaluation mask's downsample is
``froc.evaluation_downsample(m, pixel_um)`` and its pixel ``m * ds``. A mask TIFF gives its own
level-0 size. A tumour slide whose ground truth holds no tumour at that pixel is refused (the
script would measure distances to nothing and invent a region in the top-left corner).
Polygons are rasterised on the slide's level-0 size, read
with OpenSlide from summary.json's ``slide`` (as written, or relative to PREDICTIONS or its
parent); when the slide cannot be opened, on the extent of the predicted cell grid (grid x
cell_size_level0_px) and of the polygons, with a warning.

Refused in one line naming the file: a mask TIFF not of the slide's level-0 size (summary.json's
grid), a detection outside the slide, ground truth far beyond an unreachable slide's grid.

Imports: camelyon.annotations, camelyon.masks, camelyon.froc, camelyon.predictions, wsi.layout,
errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.camelyon.annotations import Regions, rasterise, read_regions
from pcam_jax.camelyon.froc import (
    ITC_UM,
    MARGIN_UM,
    OFFICIAL_PIXEL_UM,
    SCORE_RULE,
    SlideHits,
    detection_labels,
    evaluation_downsample,
    evaluation_mask,
    isolated_tumour_cells,
    slide_hits,
)
from pcam_jax.camelyon.masks import mask_tiff_size, read_mask_tiff
from pcam_jax.camelyon.predictions import (
    SUMMARY_JSON,
    Cohort,
    CohortSlide,
    Log,
    by_stem,
    lines_of,
    lookup,
    print_warning,
    read_cohort,
)
from pcam_jax.errors import AnnotationError, SlideError
from pcam_jax.wsi.layout import DETECTIONS_CSV

MASK_SUFFIXES = ("_mask.tif", "_mask.tiff", ".tif", ".tiff")
GROUND_TRUTH_SUFFIXES = (".xml", ".geojson", ".json", *MASK_SUFFIXES)
TUMOUR_LABELS = ("tumor", "tumour", "positive")
OFFICIAL_MPP = 0.243  # the level-0 um/px Evaluation_FROC.py uses for every slide
RESOLUTIONS = ("official", "slide")
MASK_VALUES = ("official", "nonzero")
NORMAL_LABELS = ("normal", "negative")
HEADER_WORDS = {"image", "image_name", "slide", "name", "file", "id", "label", "class", "type"}


@dataclass(frozen=True)
class Rules:
    """How the ground truth is read and the score computed (see the module docstring)."""

    resolution: str = "official"
    mask_values: str = "official"
    pixel_um: float = OFFICIAL_PIXEL_UM

    def check(self) -> Rules:
        """self, or SlideError naming the flag whose value is not a rule."""
        if self.resolution not in RESOLUTIONS:
            raise SlideError(
                f"--resolution={self.resolution}: expected official (every slide at "
                f"{OFFICIAL_MPP} um/px, as the challenge's script) or slide (each slide's own MPP)"
            )
        if self.mask_values not in MASK_VALUES:
            raise SlideError(
                f"--mask_values={self.mask_values}: expected official (tumour at 255, as the "
                "challenge's script) or nonzero (any value above 0)"
            )
        if not (math.isfinite(self.pixel_um) and self.pixel_um > 0):
            raise SlideError(f"--pixel_um={self.pixel_um}: expected a positive size in microns")
        return self

    @property
    def tumour_value(self) -> int | None:
        """The mask value that is tumour (None: any value above 0)."""
        return 255 if self.mask_values == "official" else None

    def level0_mpp(self, slide: CohortSlide, log: Log) -> float:
        """The slide's level-0 um/px under these rules (warns when the official 0.243 is not
        the slide's own)."""
        own = float(slide.summary["level0_mpp"])
        if self.resolution == "slide":
            return own
        if abs(own - OFFICIAL_MPP) > 0.05 * OFFICIAL_MPP:
            log(
                f"{slide.stem}: level 0 is {own:.4g} um/px; evaluated at {OFFICIAL_MPP} as the "
                "challenge's script does (--resolution=slide uses the slide's own)"
            )
        return OFFICIAL_MPP

    def describe(self) -> dict[str, Any]:
        """froc.json's "evaluation": the rules in words and numbers."""
        official = self.resolution == "official" and self.mask_values == "official"
        return {
            "resolution": self.resolution,
            "level0_mpp": OFFICIAL_MPP
            if self.resolution == "official"
            else "each slide's summary.json level0_mpp",
            "mask_values": self.mask_values,
            "mask_tumour": "255" if self.tumour_value == 255 else "above 0",
            "pixel_um_target": self.pixel_um,
            "margin_um": MARGIN_UM,
            "itc_major_axis_um": ITC_UM,
            "score": SCORE_RULE,
            "rule": "CAMELYON16 Evaluation_FROC.py"
            + ("" if official else ", with the options above")
            + " (see pcam_jax.camelyon.froc)",
        }


OFFICIAL_RULES = Rules()  # the challenge script's


@dataclass
class SlideEvaluation:
    """One slide's results: label, score, FROC part and counts."""

    stem: str
    tumour: bool
    score: float
    hits: SlideHits
    ground_truth: str | None
    downsample: int
    pixel_um: float
    detections: int
    itcs: int = 0
    itc_hits: int = 0
    outside_mask: int = 0

    def row(self) -> dict[str, Any]:
        """froc.json's entry for the slide."""
        lesions = self.hits.tp_probs > 0
        return {
            "slide": self.stem,
            "tumour": self.tumour,
            "ground_truth": self.ground_truth,
            "downsample": self.downsample,
            "pixel_um": self.pixel_um,
            "detections": self.detections,
            "fp": len(self.hits.fp_probs),
            "lesions": self.hits.num_tumours,
            "lesions_detected": int(lesions.sum()),
            "itcs": self.itcs,
            "itc_hits": self.itc_hits,
            "outside_mask": self.outside_mask,
        }


# --- ground truth and the tumour/normal decision ---------------------------------------------


def read_reference(path: str | Path) -> dict[str, bool]:
    """{stem: is tumour} of a list of normal slides (one stem per line or first CSV column) or
    a CAMELYON16 reference.csv (stem,Tumor|Normal,...); a header line (naming its columns with
    HEADER_WORDS) is skipped, any other line with another label refused."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"--normal={path}: no such file (a list of normal slides)")
    table: dict[str, bool] = {}
    first = True
    for n, line in enumerate(lines_of(path, AnnotationError), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.replace("\t", ",").split(",")]
        label = fields[1].lower() if len(fields) > 1 else ""
        if label in TUMOUR_LABELS or label in NORMAL_LABELS or not label:
            table[fields[0]] = label in TUMOUR_LABELS
        elif not (first and {fields[0].lower(), label} & HEADER_WORDS):  # a header line
            raise AnnotationError(
                f"{path}:{n}: label {fields[1]!r}; expected Tumor or Normal in the second column"
            )
        first = False
    if not table:
        raise AnnotationError(f"{path}: lists no slides")
    return table


def ground_truth_files(folder: Path) -> dict[str, Path]:
    """{lower-case file name: path} of a ground-truth folder."""
    if not folder.is_dir():
        raise AnnotationError(f"--ground_truth={folder}: no such folder")
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file()}


def find_ground_truth(files: dict[str, Path], stem: str) -> Path | None:
    """The ground-truth file of `stem` (GROUND_TRUTH_SUFFIXES, in order), or None."""
    for suffix in GROUND_TRUTH_SUFFIXES:
        hit = files.get((stem + suffix).lower())
        if hit is not None:
            return hit
    return None


def _ground_truth_stem(name: str) -> str | None:
    low = name.lower()
    for suffix in GROUND_TRUTH_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def decide(
    cohort: Cohort,
    files: dict[str, Path],
    reference: dict[str, bool] | None,
    log: Log = print_warning,
) -> tuple[list[tuple[CohortSlide, Path | None]], list[str], list[str]]:
    """(slide, its ground-truth file or None for a normal slide) of each slide evaluated, the
    stems skipped for want of a decision, and the names with ground truth (or listed in
    `reference`) but without predictions (see the module docstring)."""
    decided, undecided = [], []
    listed_by_stem = by_stem(reference) if reference is not None else {}
    for slide in cohort.slides:
        gt = find_ground_truth(files, slide.stem)
        listed = lookup(listed_by_stem, slide.stem)
        if listed is None:
            if reference is not None and gt is None:
                undecided.append(slide.stem)
                continue
            decided.append((slide, gt))
        elif listed and gt is None:
            raise AnnotationError(
                f"{slide.stem}: listed as Tumor in --normal, but --ground_truth has none of "
                f"{', '.join(slide.stem + s for s in GROUND_TRUTH_SUFFIXES)}"
            )
        elif not listed and gt is not None:
            raise AnnotationError(
                f"{slide.stem}: listed as Normal in --normal, but --ground_truth has {gt.name}; "
                "remove one of them"
            )
        else:
            decided.append((slide, gt))
    if undecided:
        log(f"no ground truth and not in --normal, skipped: {', '.join(undecided)}")
    stems = {s.stem.lower() for s in cohort.slides}
    names = [n for p in files.values() if (n := _ground_truth_stem(p.name))]
    names += list(reference or ())
    orphans = sorted(
        {n for n in names if n.lower() not in stems and Path(n).stem.lower() not in stems}
    )
    if orphans:
        log(
            f"{len(orphans)} slide(s) with ground truth or in --normal but without predictions, "
            f"not evaluated: {', '.join(orphans[:20])}{' ...' if len(orphans) > 20 else ''}"
        )
    return decided, undecided, orphans


# --- one slide -------------------------------------------------------------------------------


def _open_size(path: Path) -> tuple[int, int] | None:
    import openslide

    try:
        with openslide.OpenSlide(str(path)) as slide:
            return tuple(slide.dimensions)  # type: ignore[return-value]
    except (openslide.OpenSlideError, OSError):
        return None


def grid_extent(slide: CohortSlide) -> tuple[float, float, float] | None:
    """(cols, rows, cell) of summary.json's grid and cell_size_level0_px (None: absent); the
    slide's level-0 width lies in ``[cols * cell, (cols + 1) * cell)``, its height likewise."""
    grid, cell = slide.summary.get("grid"), slide.summary.get("cell_size_level0_px")
    try:
        rows, cols = (int(v) for v in grid)  # type: ignore[union-attr]
        return float(cols), float(rows), float(cell)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def check_detections_inside(slide: CohortSlide) -> None:
    """AnnotationError naming detections.csv when a detection lies outside the slide's grid."""
    extent, det = grid_extent(slide), slide.detections
    if extent is None or not len(det):
        return
    cols, rows, cell = extent
    outside = (det[:, 1] < 0) | (det[:, 2] < 0)
    outside |= (det[:, 1] >= (cols + 1) * cell) | (det[:, 2] >= (rows + 1) * cell)
    if outside.any():
        _, x, y = det[int(np.argmax(outside))]
        raise AnnotationError(
            f"{slide.folder / DETECTIONS_CSV}: detection at X={x:g}, Y={y:g} lies outside the "
            f"slide (about {cols * cell:.0f} x {rows * cell:.0f} level-0 pixels, summary.json's "
            "grid); X and Y must be level-0 pixels of this slide"
        )


def slide_size(
    slide: CohortSlide,
    regions: Regions,
    base: Path,
    log: Log = print_warning,
    gt: Path | None = None,
) -> tuple[int, int]:
    """Level-0 (w, h) of the slide (see the module docstring: the slide file, else the cell
    grid and the polygons)."""
    named = slide.summary.get("slide")
    if isinstance(named, str) and named:
        for candidate in (Path(named), base / named, base.parent / named):
            if candidate.is_file() and (size := _open_size(candidate)) is not None:
                return size
    extent = grid_extent(slide)
    if extent is None:
        raise SlideError(
            f"{slide.folder / SUMMARY_JSON}: the slide {named!r} cannot be opened and there is no "
            "grid / cell_size_level0_px to size the ground-truth mask; make the slide reachable"
        )
    cols, rows, cell = extent
    x, y = regions.extent()
    if x >= (cols + 2) * cell or y >= (rows + 2) * cell:
        raise AnnotationError(
            f"{gt or slide.stem}: the ground truth reaches level-0 ({x:g}, {y:g}), beyond the "
            f"slide {slide.stem} "
            f"(about {cols * cell:.0f} x {rows * cell:.0f} pixels, summary.json's grid; the slide "
            f"{named!r} cannot be opened): the ground truth is another slide's, or not in "
            "level-0 pixels"
        )
    size = (math.ceil(max(cols * cell, x + 1)), math.ceil(max(rows * cell, y + 1)))
    log(
        f"{slide.stem}: slide {named!r} cannot be opened; ground truth rasterised on the "
        f"predicted grid's extent, {size[0]} x {size[1]} level-0 pixels"
    )
    return size


def ground_truth_mask(
    slide: CohortSlide,
    gt: Path,
    downsample: int,
    base: Path,
    log: Log = print_warning,
    tumour_value: int | None = 255,
) -> np.ndarray:
    """The slide's boolean tumour mask at `downsample` from its ground-truth file (a mask
    TIFF's tumour pixels: those equal to `tumour_value`, or above 0 with None)."""
    if gt.name.lower().endswith(MASK_SUFFIXES):
        extent = grid_extent(slide)
        if extent is not None:
            cols, rows, cell = extent
            w, h = mask_tiff_size(gt)
            if not (cols * cell - 1 <= w < (cols + 1) * cell + 1) or not (
                rows * cell - 1 <= h < (rows + 1) * cell + 1
            ):
                raise AnnotationError(
                    f"{gt}: the mask is {w} x {h} level-0 pixels, the slide {slide.stem} about "
                    f"{cols * cell:.0f} x {rows * cell:.0f} (summary.json's grid of "
                    f"{cell:g}-pixel cells); a mask must be its slide's level-0 size"
                )
        return read_mask_tiff(gt, downsample, tumour_value)
    regions = read_regions(gt)
    return rasterise(regions, slide_size(slide, regions, base, log, gt), downsample)


def evaluate_slide(
    slide: CohortSlide,
    gt: Path | None,
    *,
    rules: Rules = OFFICIAL_RULES,
    base: Path = Path("."),
    log: Log = print_warning,
) -> SlideEvaluation:
    """One slide's FROC part: normal when `gt` is None, else against its ground truth."""
    check_detections_inside(slide)
    mpp = rules.level0_mpp(slide, log)
    ds = evaluation_downsample(mpp, rules.pixel_um)
    px = mpp * ds
    n = len(slide.detections)
    if gt is None:
        hits = slide_hits(slide.detections, None, set(), ds, False)
        return SlideEvaluation(slide.stem, False, slide.score, hits, None, ds, px, n)
    tumour = ground_truth_mask(slide, gt, ds, base, log, rules.tumour_value)
    if not tumour.any():
        which = (
            ""
            if rules.tumour_value is None
            else f" (no pixel at {rules.tumour_value}; a mask written 0/1 needs "
            "--mask_values=nonzero)"
        )
        raise AnnotationError(
            f"{slide.stem}: its ground truth {gt} holds no tumour{which} inside the slide at "
            f"{px:.4g} um per pixel, so this tumour slide has no lesion to find: fix the file, "
            "or list the slide as Normal in --normal"
        )
    labels = evaluation_mask(tumour, px)
    itcs = isolated_tumour_cells(labels, px)
    hits = slide_hits(slide.detections, labels, itcs, ds, True)
    under = detection_labels(slide.detections, labels, ds)
    return SlideEvaluation(
        slide.stem,
        True,
        slide.score,
        hits,
        str(gt),
        ds,
        px,
        n,
        itcs=len(itcs),
        itc_hits=int(np.isin(under, list(itcs)).sum()),
        outside_mask=int((under < 0).sum()),
    )


def evaluate_cohort(
    predictions: str | Path,
    ground_truth: str | Path,
    *,
    normal: str | Path | None = None,
    rules: Rules = OFFICIAL_RULES,
    slide_score: str = "file",
    log: Log = print_warning,
) -> tuple[Cohort, list[SlideEvaluation], dict[str, list[str]]]:
    """Every slide of PREDICTIONS evaluated; returns the cohort, the evaluations and the names
    skipped: failed (slides.csv), undecided (no ground truth, not in `normal`), no_predictions
    (ground truth or listed, but not predicted)."""
    rules.check()
    files = ground_truth_files(Path(ground_truth))
    reference = read_reference(normal) if normal else None
    cohort = read_cohort(predictions, slide_score, log)
    decided, undecided, orphans = decide(cohort, files, reference, log)
    if not decided:
        raise AnnotationError("no slide has a tumour/normal decision; see the warnings above")
    evaluations = [
        evaluate_slide(s, gt, rules=rules, base=cohort.folder, log=log) for s, gt in decided
    ]
    skipped = {"failed": cohort.failed, "undecided": undecided, "no_predictions": orphans}
    return cohort, evaluations, skipped


__all__ = [
    "Cohort",
    "CohortSlide",
    "Log",
    "MASK_VALUES",
    "OFFICIAL_MPP",
    "OFFICIAL_RULES",
    "RESOLUTIONS",
    "Rules",
    "SlideEvaluation",
    "decide",
    "evaluate_cohort",
    "evaluate_slide",
    "find_ground_truth",
    "ground_truth_files",
    "ground_truth_mask",
    "print_warning",
    "read_cohort",
    "read_reference",
    "slide_size",
]
