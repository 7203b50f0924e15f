"""The predictions side of pcam-camelyon-eval: a pcam-slide cohort folder read into slides,
detections and slide scores (``read_cohort``), and the name matching it shares with the
ground truth (``by_stem``).

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

Imports: wsi.layout (the folders' names), wsi.detections, errors.
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

from pcam_jax.errors import SlideError
from pcam_jax.wsi.detections import read_detections_csv
from pcam_jax.wsi.layout import DETECTIONS_CSV, SLIDE_SCORES_CSV, SLIDES_CSV, SUMMARY_JSON

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


# --- reading the predictions -----------------------------------------------------------------


def by_stem(table: dict[str, Any]) -> dict[str, Any]:
    """`table` keyed also by each name without its suffix ("Test_001.tif" -> "Test_001") and by
    both in lower case (CAMELYON16's reference.csv says "Test_001" for test_001.tif); an exact
    name wins."""
    out = dict(table)
    for name, value in table.items():
        for key in (Path(name).stem, name.lower(), Path(name).stem.lower()):
            out.setdefault(key, value)
    return out


def lookup(table: dict[str, Any], stem: str) -> Any:
    """table[stem], else table[stem.lower()], else None (a `by_stem` table)."""
    return table.get(stem, table.get(stem.lower()))


def lines_of(path: Path, error: type[Exception]) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read it as text ({e})") from None


def read_slide_scores(path: str | Path) -> dict[str, float]:
    """{image_name: probability} of a slide_scores.csv (a header line is skipped), keyed also
    by the name without its suffix."""
    path = Path(path)
    table: dict[str, float] = {}
    for n, line in enumerate(lines_of(path, SlideError), 1):
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
    return by_stem(table)


def _failed_slides(folder: Path) -> list[str]:
    path = folder / SLIDES_CSV
    if not path.is_file():
        return []
    try:
        rows = list(csv.DictReader(lines_of(path, SlideError)))
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
