"""Lesion detections from a slide's cell map, in the CAMELYON16 challenge's formats.

Rule (greedy non-maximum suppression, as the CAMELYON16 pipelines that report FROC do: Liu et
al. 2017, NCRF (Li & Ping 2018), MONAI's pathology bundle): among the tissue cells whose
p(tumour) is at least ``floor``, take the highest, report its centre, suppress every cell whose
centre lies within ``radius_um`` of it (Euclidean, in microns of the slide), and repeat until no
cell at or above the floor is left. Ties go to the first cell in row-major order, so the result
is deterministic.

Defaults and why: ``floor = 0.5`` (NCRF, MONAI and Liu et al. all stop at 0.5: below it the
model calls the cell normal); ``radius_um = 187`` microns, NCRF's 12 pixels at level 6 of
CAMELYON16 (12 x 64 x 0.243 um), about the 75 um evaluation margin plus the 275 um
isolated-tumour-cell scale the challenge's FROC is built on: one detection per lesion of
metastasis size, and two lesions further apart than that stay two. The radius is in microns,
so a slide scanned at another resolution gets the same physical suppression.

Coordinates: a detection is the centre of its cell in level-0 pixels,
``X = round((col + 0.5) * c)``, ``Y = round((row + 0.5) * c)`` with ``c`` the cell size in
level-0 pixels (``SlideGeometry.cell0``), as the FROC evaluation reads them (``pcam_jax.camelyon``).

Files (the challenge's formats: no header line):

    detections.csv     one line per detection: probability,X,Y  (highest first)
    slide_scores.csv   one line per slide: image_name,probability  (a cohort's slide scores)

Imports: runtime, errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pcam_jax.errors import SlideError
from pcam_jax.runtime.files import atomic_path

NMS_FLOOR = 0.5
NMS_RADIUS_UM = 187.0


def non_maximum_suppression(
    probabilities: np.ndarray,
    cell_um: float,
    *,
    floor: float = NMS_FLOOR,
    radius_um: float = NMS_RADIUS_UM,
) -> np.ndarray:
    """Local maxima of a cell map (rows, cols) (NaN: no tissue) as (K, 3) float64 rows
    (probability, row, col), highest first (see the module docstring); `cell_um` is the cell's
    side in microns."""
    if not 0.0 <= floor <= 1.0:
        raise SlideError(f"--nms_floor={floor}: expected a probability in [0, 1]")
    if not (radius_um >= 0 and np.isfinite(radius_um)):
        raise SlideError(f"--nms_radius_um={radius_um}: expected a distance >= 0 in microns")
    p = np.nan_to_num(np.asarray(probabilities, np.float64), nan=-1.0)
    rows, cols = np.nonzero(p >= floor)
    if not len(rows):
        return np.zeros((0, 3))
    values = p[rows, cols]
    order = np.lexsort((cols, rows, -values))  # highest first, then row-major
    r = radius_um / cell_um  # in cells
    reach = int(np.floor(r))
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    disk = dy**2 + dx**2 <= r * r + 1e-9
    suppressed = np.zeros(p.shape, bool)
    kept = []
    for k in order:
        y, x = int(rows[k]), int(cols[k])
        if suppressed[y, x]:
            continue
        kept.append((values[k], y, x))
        y0, y1 = max(0, y - reach), min(p.shape[0], y + reach + 1)
        x0, x1 = max(0, x - reach), min(p.shape[1], x + reach + 1)
        stamp = disk[y0 - y + reach : y1 - y + reach, x0 - x + reach : x1 - x + reach]
        suppressed[y0:y1, x0:x1] |= stamp
    return np.asarray(kept, np.float64).reshape(-1, 3)


def detections_level0(maxima: np.ndarray, cell0: float) -> list[tuple[float, int, int]]:
    """(probability, X, Y) with X, Y the level-0 pixel centres of the maxima's cells."""
    return [
        (float(p), round((col + 0.5) * cell0), round((row + 0.5) * cell0))
        for p, row, col in maxima.tolist()
    ]


def write_detections_csv(path: str | Path, detections: Sequence[tuple[float, int, int]]) -> None:
    """detections.csv in the challenge's format: ``probability,X,Y`` per line, no header."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for p, x, y in detections:
            f.write(f"{p!r},{x},{y}\n")


def write_slide_scores_csv(path: str | Path, scores: Sequence[tuple[str, float]]) -> None:
    """slide_scores.csv in the challenge's format: ``image_name,probability`` per line."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for name, p in scores:
            if "," in name or "\n" in name:
                raise SlideError(f"{name!r}: a slide name for slide_scores.csv has a comma")
            f.write(f"{name},{p!r}\n")


def read_detections_csv(path: str | Path) -> np.ndarray:
    """(K, 3) float64 rows (probability, X, Y) of a detections.csv (a header line, if any, is
    skipped); SlideError naming the file and line otherwise."""
    path = Path(path)
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SlideError(f"{path}: cannot read the detections ({e.strerror})") from None
    for n, line in enumerate(lines, 1):
        fields = [f.strip() for f in line.split(",")]
        if not line.strip() or (n == 1 and fields[0].lower() in ("probability", "confidence")):
            continue
        try:
            p, x, y = (float(v) for v in fields)
        except ValueError:
            raise SlideError(
                f"{path}:{n}: expected 'probability,X,Y' (numbers), got {line[:80]!r}"
            ) from None
        if not (0.0 <= p <= 1.0 and np.isfinite(x) and np.isfinite(y)):
            raise SlideError(f"{path}:{n}: probability {p} not in [0, 1] or X, Y not finite")
        out.append((p, x, y))
    return np.asarray(out, np.float64).reshape(-1, 3)
