"""pcam-camelyon-eval's library: a pcam-slide cohort scored against CAMELYON16 ground truth,
slide-level AUC and lesion-level FROC (``froc``), written by ``report``.

Predictions (PREDICTIONS, a folder written by ``pcam-slide ... --out=PREDICTIONS``)
-----------------------------------------------------------------------------------
    STEM/summary.json    read: level0_mpp (required), slide (the slide's path), grid and
                         cell_size_level0_px, score_max and the other scores
    STEM/detections.csv  probability,X,Y per line, X and Y level-0 pixels, no header (a header
                         line "probability,x,y" is skipped): the challenge's format
    slide_scores.csv     optional: image_name,probability per line, no header (the challenge's
                         format); image_name is the stem (or the file name)
    slides.csv           optional: a row per slide with its status; slides whose status is not
                         "done" (failed) are skipped, with a warning naming them
A folder with summary.json at its top (one pcam-slide run) is a cohort of that one slide.
Sub-folders without summary.json are skipped with a warning.

The slide score (``slide_score``): "file" (default) takes slide_scores.csv, which must then list
every slide, or summary.json's score_max when the folder has no slide_scores.csv; any other
value names a number of summary.json (score_max, score_top10_mean, ...).

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

Geometry
--------
The resolution is summary.json's level0_mpp (the slide's own); the evaluation mask's
downsample is ``froc.evaluation_downsample(mpp, pixel_um)`` and its pixel ``mpp * ds``. A mask
TIFF gives its own level-0 size. Polygons are rasterised on the slide's level-0 size, read
with OpenSlide from summary.json's ``slide`` (as written, or relative to PREDICTIONS or its
parent); when the slide cannot be opened, on the extent of the predicted cell grid (grid x
cell_size_level0_px) and of the polygons, with a warning.

Imports: camelyon.annotations, camelyon.masks, camelyon.froc, infer.detections, runtime, errors.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.camelyon.annotations import Regions, rasterise, read_regions
from pcam_jax.camelyon.froc import (
    OFFICIAL_PIXEL_UM,
    SlideHits,
    detection_labels,
    evaluation_downsample,
    evaluation_mask,
    isolated_tumour_cells,
    slide_hits,
)
from pcam_jax.camelyon.masks import read_mask_tiff
from pcam_jax.errors import AnnotationError, SlideError
from pcam_jax.infer.detections import read_detections_csv

GROUND_TRUTH_SUFFIXES = (
    ".xml", ".geojson", ".json", "_mask.tif", "_mask.tiff", ".tif", ".tiff"
)  # fmt: skip
MASK_SUFFIXES = ("_mask.tif", "_mask.tiff", ".tif", ".tiff")
SUMMARY_JSON = "summary.json"
DETECTIONS_CSV = "detections.csv"
SLIDE_SCORES_CSV = "slide_scores.csv"
SLIDES_CSV = "slides.csv"
TUMOUR_LABELS = ("tumor", "tumour", "positive")
NORMAL_LABELS = ("normal", "negative")

Log = Callable[[str], None]


def print_warning(line: str) -> None:
    """The default `log`: "warning: LINE" on stderr."""
    print(f"warning: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CohortSlide:
    """One predicted slide: its stem, folder, summary.json, detections (N, 3) (probability,
    X, Y level-0) and slide score."""

    stem: str
    folder: Path
    summary: dict[str, Any]
    detections: np.ndarray
    score: float


@dataclass
class Cohort:
    """The slides of PREDICTIONS, the failed ones skipped, and where the scores came from."""

    folder: Path
    slides: list[CohortSlide]
    failed: list[str] = field(default_factory=list)
    score_source: str = "slide_scores.csv"


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


# --- reading the predictions -----------------------------------------------------------------


def _by_stem(table: dict[str, Any]) -> dict[str, Any]:
    """`table` keyed also by each name without its suffix ("Test_001.tif" -> "Test_001"); an
    exact name wins."""
    out = dict(table)
    for name, value in table.items():
        out.setdefault(Path(name).stem, value)
    return out


def _lines(path: Path, error: type[Exception]) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read it as text ({e})") from None


def read_slide_scores(path: str | Path) -> dict[str, float]:
    """{image_name: probability} of a slide_scores.csv (a header line is skipped), keyed also
    by the name without its suffix."""
    path = Path(path)
    table: dict[str, float] = {}
    for n, line in enumerate(_lines(path, SlideError), 1):
        fields = [f.strip() for f in line.split(",")]
        if not line.strip():
            continue
        try:
            if len(fields) != 2 or not math.isfinite(float(fields[1])):
                raise ValueError
            table[fields[0]] = float(fields[1])
        except ValueError:
            if n == 1:
                continue  # a header line
            raise SlideError(
                f"{path}:{n}: expected 'image_name,probability', got {line[:80]!r}"
            ) from None
    return _by_stem(table)


def _failed_slides(folder: Path) -> list[str]:
    path = folder / SLIDES_CSV
    if not path.is_file():
        return []
    try:
        rows = list(csv.DictReader(_lines(path, SlideError)))
    except csv.Error as e:
        raise SlideError(f"{path}: unreadable ({e}); remove it or rerun pcam-slide") from None
    if rows and not {"slide", "status"} <= set(rows[0]):
        raise SlideError(f"{path}: expected 'slide' and 'status' columns (pcam-slide's slides.csv)")
    return [Path(r["slide"]).stem for r in rows if r["status"].strip() != "done"]


def _summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SlideError(f"{path}: unreadable ({e}); rerun pcam-slide for that slide") from None
    if not isinstance(summary, dict):
        raise SlideError(f"{path}: expected a JSON object (pcam-slide's summary.json)")
    mpp = summary.get("level0_mpp")
    if not isinstance(mpp, int | float) or not (math.isfinite(mpp) and mpp > 0):
        raise SlideError(f"{path}: level0_mpp={mpp!r}; expected the slide's level-0 um/px")
    return summary


def _slide_folders(folder: Path, failed: set[str], log: Log) -> list[Path]:
    if (folder / SUMMARY_JSON).is_file():
        return [folder]
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (sub / SUMMARY_JSON).is_file():
            found.append(sub)
        elif sub.name not in failed:
            log(f"{sub}: no {SUMMARY_JSON} (not a finished pcam-slide folder); skipped")
    return found


def _score(summary: dict[str, Any], key: str, where: Path) -> float:
    value = summary.get(key)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise SlideError(f"{where}: no number {key!r}; choose another --slide_score")
    return float(value)


def read_cohort(folder: str | Path, slide_score: str = "file", log: Log = print_warning) -> Cohort:
    """The finished slides of a pcam-slide cohort folder (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SlideError(f"--predictions={folder}: no such folder (expected pcam-slide's --out)")
    failed = _failed_slides(folder)
    if failed:
        log(f"{len(failed)} failed slide(s) in {folder / SLIDES_CSV}, skipped: {', '.join(failed)}")
    scores_path = folder / SLIDE_SCORES_CSV
    use_file = slide_score == "file" and scores_path.is_file()
    scores = read_slide_scores(scores_path) if use_file else {}
    key = "score_max" if slide_score == "file" else slide_score
    slides = []
    for sub in _slide_folders(folder, set(failed), log):
        summary = _summary(sub / SUMMARY_JSON)
        stem = Path(str(summary.get("slide", sub.name))).stem if sub == folder else sub.name
        if stem in failed:
            continue
        dets = sub / DETECTIONS_CSV
        if not dets.is_file():
            raise SlideError(f"{dets}: missing; rerun pcam-slide for {stem} (it writes it)")
        if use_file and stem not in scores:
            raise SlideError(f"{scores_path}: no score for {stem}; rerun pcam-slide's cohort")
        score = scores[stem] if use_file else _score(summary, key, sub / SUMMARY_JSON)
        slides.append(CohortSlide(stem, sub, summary, read_detections_csv(dets), score))
    if not slides:
        raise SlideError(f"--predictions={folder}: no finished pcam-slide slide folders in it")
    source = SLIDE_SCORES_CSV if use_file else f"{SUMMARY_JSON}:{key}"
    return Cohort(folder, slides, failed, source)


# --- ground truth and the tumour/normal decision ---------------------------------------------


def read_reference(path: str | Path) -> dict[str, bool]:
    """{stem: is tumour} of a list of normal slides (one stem per line or first CSV column) or
    a CAMELYON16 reference.csv (stem,Tumor|Normal,...); a header line is skipped."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"--normal={path}: no such file (a list of normal slides)")
    table: dict[str, bool] = {}
    first = True
    for n, line in enumerate(_lines(path, AnnotationError), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.replace("\t", ",").split(",")]
        label = fields[1].lower() if len(fields) > 1 else ""
        if label in TUMOUR_LABELS or label in NORMAL_LABELS or not label:
            table[fields[0]] = label in TUMOUR_LABELS
        elif not first:
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
    listed_by_stem = _by_stem(reference) if reference is not None else {}
    for slide in cohort.slides:
        gt = find_ground_truth(files, slide.stem)
        listed = listed_by_stem.get(slide.stem)
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
    stems = {s.stem for s in cohort.slides}
    names = [n for p in files.values() if (n := _ground_truth_stem(p.name))]
    names += list(reference or ())
    orphans = sorted({n for n in names if n not in stems and Path(n).stem not in stems})
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


def slide_size(
    slide: CohortSlide, regions: Regions, base: Path, log: Log = print_warning
) -> tuple[int, int]:
    """Level-0 (w, h) of the slide (see the module docstring: the slide file, else the cell
    grid and the polygons)."""
    named = slide.summary.get("slide")
    if isinstance(named, str) and named:
        for candidate in (Path(named), base / named, base.parent / named):
            if candidate.is_file() and (size := _open_size(candidate)) is not None:
                return size
    grid, cell = slide.summary.get("grid"), slide.summary.get("cell_size_level0_px")
    try:
        rows, cols = (int(v) for v in grid)  # type: ignore[union-attr]
        cell = float(cell)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SlideError(
            f"{slide.folder / SUMMARY_JSON}: the slide {named!r} cannot be opened and there is no "
            "grid / cell_size_level0_px to size the ground-truth mask; make the slide reachable"
        ) from None
    x, y = regions.extent()
    size = (math.ceil(max(cols * cell, x + 1)), math.ceil(max(rows * cell, y + 1)))
    log(
        f"{slide.stem}: slide {named!r} cannot be opened; ground truth rasterised on the "
        f"predicted grid's extent, {size[0]} x {size[1]} level-0 pixels"
    )
    return size


def ground_truth_mask(
    slide: CohortSlide, gt: Path, downsample: int, base: Path, log: Log = print_warning
) -> np.ndarray:
    """The slide's boolean tumour mask at `downsample` from its ground-truth file."""
    if gt.name.lower().endswith(MASK_SUFFIXES):
        return read_mask_tiff(gt, downsample)
    regions = read_regions(gt)
    return rasterise(regions, slide_size(slide, regions, base, log), downsample)


def evaluate_slide(
    slide: CohortSlide,
    gt: Path | None,
    *,
    pixel_um: float = OFFICIAL_PIXEL_UM,
    base: Path = Path("."),
    log: Log = print_warning,
) -> SlideEvaluation:
    """One slide's FROC part: normal when `gt` is None, else against its ground truth."""
    mpp = float(slide.summary["level0_mpp"])
    ds = evaluation_downsample(mpp, pixel_um)
    px = mpp * ds
    n = len(slide.detections)
    if gt is None:
        hits = slide_hits(slide.detections, None, set(), ds, False)
        return SlideEvaluation(slide.stem, False, slide.score, hits, None, ds, px, n)
    labels = evaluation_mask(ground_truth_mask(slide, gt, ds, base, log), px)
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
    pixel_um: float = OFFICIAL_PIXEL_UM,
    slide_score: str = "file",
    log: Log = print_warning,
) -> tuple[Cohort, list[SlideEvaluation], dict[str, list[str]]]:
    """Every slide of PREDICTIONS evaluated; returns the cohort, the evaluations and the names
    skipped: failed (slides.csv), undecided (no ground truth, not in `normal`), no_predictions
    (ground truth or listed, but not predicted)."""
    if not (math.isfinite(pixel_um) and pixel_um > 0):
        raise SlideError(f"--pixel_um={pixel_um}: expected a positive size in microns")
    files = ground_truth_files(Path(ground_truth))
    reference = read_reference(normal) if normal else None
    cohort = read_cohort(predictions, slide_score, log)
    decided, undecided, orphans = decide(cohort, files, reference, log)
    if not decided:
        raise AnnotationError("no slide has a tumour/normal decision; see the warnings above")
    evaluations = [
        evaluate_slide(s, gt, pixel_um=pixel_um, base=cohort.folder, log=log) for s, gt in decided
    ]
    skipped = {"failed": cohort.failed, "undecided": undecided, "no_predictions": orphans}
    return cohort, evaluations, skipped


__all__ = [
    "Cohort",
    "CohortSlide",
    "Log",
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
    "read_slide_scores",
    "slide_size",
]
