"""The CAMELYON16 lesion-level FROC, computed as the challenge's evaluation script computes it
(Evaluation_FROC.py, Babak Ehteshami Bejnordi, 2016: ``computeEvaluationMask``,
``computeITCList``, ``compute_FP_TP_Probs``, ``computeFROC``), as pure functions.

The evaluation mask (``evaluation_mask``)
------------------------------------------
On a tumour mask whose pixels are ``px_um`` microns (the official: level 5 of the mask,
0.243 um x 32 = 7.776 um)::

    distance = scipy.ndimage.distance_transform_edt(~tumour)       # pixels to the nearest tumour
    binary   = distance < 75 / (2 * px_um)                         # the script's "75 um, about
                                                                   # 5 tumour cells", halved: a
                                                                   # 37.5 um margin
    filled   = scipy.ndimage.binary_fill_holes(binary)
    labels   = scipy.ndimage.label(filled, 8-connectivity)         # skimage's connectivity=2

So two lesions closer than 2 x 37.5 = 75 um become one, and regions touching diagonally are one.

Isolated tumour cells (``isolated_tumour_cells``)
-------------------------------------------------
A label is an ITC when its major axis (on the dilated region) is ``< 275 / px_um`` pixels
(the script's ``275 / (0.243 * 2**5)`` = 35.4 pixels: 200 um plus the 75 um of dilation). The
major axis is skimage's ``regionprops(...).major_axis_length``: ``4 sqrt(l1)``, l1 the largest
eigenvalue of ``[[mu20, mu11], [mu11, mu02]] / mu00``, the central moments of the label's pixel
(row, col) coordinates (the covariance with the 1/N normalisation).

Per slide (``slide_hits``)
--------------------------
A detection is (probability, X, Y), X and Y level-0 pixels (the script's ``int(float(..))``
truncation, then ``Y // ds`` and ``X // ds`` with ds the mask's downsample; row = Y). On a
tumour slide a detection whose pixel holds label 0 is a false positive (its probability joins
the FP list), one on an ITC label is ignored (neither TP nor FP), and one on lesion L sets
``TP[L - 1] = max(TP[L - 1], p)``; ``TP`` has one float32 entry per label, ITCs included,
starting at 0 (the script's ``np.zeros((max_label,), dtype=np.float32)``), and
``num_tumours = max_label - #ITC``. On a normal slide every detection is a false positive. A
detection outside the mask (or at a negative coordinate) is a false positive here, as label 0:
the script would raise IndexError (or wrap around, for negative indices).

The curve and the score (``froc_curve``, ``froc_score``)
--------------------------------------------------------
Over all slides, FPs = every FP probability, TPs = every TP entry (the zeros of missed lesions
and of ITCs included)::

    thresholds = sorted(set(FPs + TPs))[1:]                        # the lowest one is skipped
    total_FPs  = [sum(FPs >= t) for t in thresholds] + [0]
    total_TPs  = [sum(TPs >= t) for t in thresholds] + [0]
    avg_fps    = total_FPs / number_of_slides                      # slides evaluated
    sensitivity = total_TPs / sum(num_tumours)
    score      = mean(np.interp([0.25, 0.5, 1, 2, 4, 8], avg_fps[::-1], sensitivity[::-1]))

The script stops at the curve; the score is NCRF's and MONAI's rule (``SCORE_RULE``, which the
report names). Another rule in circulation (the first curve point at or above each rate) can
move a score by 0.15 on small cohorts, so scores computed by other code compare only when the
rule is the same.

Precision, as the script: TP entries are float32, FP probabilities float64; ``TPs >= t``
compares in float32 (numpy casts the threshold to the array's float32) and ``FPs >= t`` in
float64; the thresholds are the distinct float64 values, sorted. For float32 probabilities
(what pcam-slide writes) none of this changes a number.

The evaluation pixel size (``evaluation_downsample``): the official 7.776 um; on a slide of
level-0 resolution m the mask's downsample is the power of two nearest (in log scale) to
7.776 / m (CAMELYON16's 0.243 um: 32; a 0.972 um slide: 8) and ``px_um = m * ds``. The script
takes m = 0.243 for every slide (CAMELYON16's Utrecht slides are about 0.226 um/px);
``camelyon.evaluate.Rules`` says which m a run uses.

Imports: nothing of pcam_jax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

OFFICIAL_PIXEL_UM = 0.243 * 2**5  # level 5 of CAMELYON16's 0.243 um/px slides
MARGIN_UM = 75.0  # the script's 75 um, applied as a 37.5 um distance
ITC_UM = 275.0
FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# what froc_score computes, as the report names it: the script draws the curve, not a score
SCORE_RULE = (
    "mean of the sensitivities at 1/4, 1/2, 1, 2, 4 and 8 average false positives per slide, "
    "each linearly interpolated on the FROC curve (np.interp, as NCRF and MONAI compute it; "
    "Evaluation_FROC.py draws the curve and computes no score)"
)


class SlideHits(NamedTuple):
    """One slide's part of the FROC: FP probabilities (float64), TP entries (float32, one per
    label of the evaluation mask, ITCs included; 0: missed), and its number of lesions."""

    fp_probs: np.ndarray
    tp_probs: np.ndarray
    num_tumours: int


def evaluation_downsample(mpp0: float, pixel_um: float = OFFICIAL_PIXEL_UM) -> int:
    """The power of two nearest (log scale; the finer on a tie) to `pixel_um` / `mpp0`: the
    downsample of the evaluation mask of a slide of level-0 `mpp0` um/px."""
    if not (math.isfinite(mpp0) and mpp0 > 0 and math.isfinite(pixel_um) and pixel_um > 0):
        raise ValueError(f"mpp {mpp0}, pixel {pixel_um} um: expected positive sizes")
    exponent = math.log2(pixel_um / mpp0)
    k = math.floor(exponent)
    k = k + 1 if exponent - k > 0.5 else k
    return 2 ** max(0, k)


def evaluation_mask(
    tumour_mask: np.ndarray, px_um: float, margin_um: float = MARGIN_UM
) -> np.ndarray:
    """int32 labels (H, W) of a boolean tumour mask (H, W) of `px_um` um pixels: 0 background,
    1..L the lesions dilated by ``margin_um / 2`` (see the module docstring)."""
    tumour = np.asarray(tumour_mask, bool)
    if not tumour.any():
        return np.zeros(tumour.shape, np.int32)
    distance = ndimage.distance_transform_edt(~tumour)
    binary = distance < margin_um / (px_um * 2)
    filled = ndimage.binary_fill_holes(binary)
    labels, _ = ndimage.label(filled, structure=np.ones((3, 3), int))
    return labels.astype(np.int32)


def major_axis_lengths(labels: np.ndarray) -> np.ndarray:
    """(L,) skimage's major_axis_length (pixels) of labels 1..L: 4 sqrt of the largest
    eigenvalue of the covariance (1/N) of the label's pixel (row, col) coordinates."""
    n_labels = int(labels.max(initial=0))
    if not n_labels:
        return np.zeros(0)
    rr, cc = np.nonzero(labels)
    lab = labels[rr, cc]
    n = np.bincount(lab, minlength=n_labels + 1)[1:].astype(np.float64)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(lab, values, minlength=n_labels + 1)[1:] / n

    dr = rr - mean(rr.astype(np.float64))[lab - 1]
    dc = cc - mean(cc.astype(np.float64))[lab - 1]
    a, b, c = mean(dr * dr), mean(dr * dc), mean(dc * dc)
    l1 = (a + c) / 2 + np.sqrt(((a - c) / 2) ** 2 + b**2)
    return 4 * np.sqrt(np.maximum(l1, 0.0))


def isolated_tumour_cells(labels: np.ndarray, px_um: float, itc_um: float = ITC_UM) -> set[int]:
    """The labels whose major axis is below ``itc_um / px_um`` pixels (isolated tumour cells)."""
    lengths = major_axis_lengths(labels)
    return {int(k) + 1 for k in np.flatnonzero(lengths < itc_um / px_um)}


def detection_labels(detections: np.ndarray, labels: np.ndarray, downsample: int) -> np.ndarray:
    """(N,) int64 label under each detection (N, 3) (probability, X, Y level-0); -1 for a
    detection outside the mask."""
    det = np.asarray(detections, np.float64).reshape(-1, 3)
    x = np.trunc(det[:, 1]).astype(np.int64) // downsample
    y = np.trunc(det[:, 2]).astype(np.int64) // downsample
    inside = (x >= 0) & (y >= 0) & (y < labels.shape[0]) & (x < labels.shape[1])
    out = np.full(len(det), -1, np.int64)
    out[inside] = labels[y[inside], x[inside]]
    return out


def slide_hits(
    detections: np.ndarray,
    labels: np.ndarray | None,
    itcs: set[int],
    downsample: int,
    is_tumour: bool,
) -> SlideHits:
    """FP probabilities, TP entries and number of lesions of one slide (module docstring).

    detections: (N, 3) (probability, X, Y), X and Y level-0 pixels; labels: the evaluation
    mask at `downsample` (None for a normal slide); itcs: its ITC labels.
    """
    det = np.asarray(detections, np.float64).reshape(-1, 3)
    if not is_tumour or labels is None:
        return SlideHits(det[:, 0].copy(), np.zeros(0, np.float32), 0)
    max_label = int(labels.max(initial=0))
    hit = detection_labels(det, labels, downsample)
    tp = np.zeros(max_label, np.float32)
    lesion = (hit > 0) & ~np.isin(hit, list(itcs))
    np.maximum.at(tp, hit[lesion] - 1, det[lesion, 0].astype(np.float32))
    return SlideHits(det[hit <= 0, 0].copy(), tp, max_label - len(itcs))


def froc_points(per_slide: Sequence[SlideHits]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds (T,), FP counts (T + 1,), TP counts (T + 1,)): the script's computeFROC
    counts before division; the last point (0, 0) has no threshold."""
    fps = np.concatenate([np.zeros(0)] + [np.asarray(s.fp_probs, np.float64) for s in per_slide])
    tps = np.concatenate(
        [np.zeros(0, np.float32)] + [np.asarray(s.tp_probs, np.float32) for s in per_slide]
    )
    thresholds = np.unique(np.concatenate([fps, tps.astype(np.float64)]))[1:]
    fps_sorted, tps_sorted = np.sort(fps), np.sort(tps)
    fp_counts = len(fps) - np.searchsorted(fps_sorted, thresholds, side="left")
    tp_counts = len(tps) - np.searchsorted(tps_sorted, thresholds.astype(np.float32), side="left")
    return thresholds, np.append(fp_counts, 0), np.append(tp_counts, 0)


def froc_curve(
    per_slide: Sequence[SlideHits], n_slides: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(average FPs per slide, sensitivity), both (T + 1,), thresholds ascending (so both
    decrease; the last point is (0, 0)); `n_slides` defaults to len(per_slide). The
    sensitivity is NaN when there is no lesion."""
    _, fp_counts, tp_counts = froc_points(per_slide)
    n = len(per_slide) if n_slides is None else n_slides
    lesions = sum(int(s.num_tumours) for s in per_slide)
    avg_fps = fp_counts / float(n) if n else np.full(len(fp_counts), np.nan)
    sensitivity = tp_counts / float(lesions) if lesions else np.full(len(tp_counts), np.nan)
    return avg_fps, sensitivity


def froc_score(
    avg_fps: np.ndarray, sensitivity: np.ndarray, rates: Sequence[float] = FP_RATES
) -> tuple[float, np.ndarray]:
    """(the mean sensitivity at `rates` average FPs per slide, those sensitivities), by
    ``np.interp`` on the reversed curve, as the script."""
    at = np.array([np.interp(r, avg_fps[::-1], sensitivity[::-1]) for r in rates], np.float64)
    total = 0.0
    for value in at:  # the script's running sum, then / 6
        total += float(value)
    return total / len(rates), at


__all__ = [
    "FP_RATES",
    "SCORE_RULE",
    "ITC_UM",
    "MARGIN_UM",
    "OFFICIAL_PIXEL_UM",
    "SlideHits",
    "detection_labels",
    "evaluation_downsample",
    "evaluation_mask",
    "froc_curve",
    "froc_points",
    "froc_score",
    "isolated_tumour_cells",
    "major_axis_lengths",
    "slide_hits",
]
