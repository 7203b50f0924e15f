"""pcam_jax.camelyon and pcam-camelyon-eval: the CAMELYON16 FROC against hand-computed cases
and against an independent, loop-by-loop implementation of the challenge's Evaluation_FROC.py;
the evaluation-mask rules; the three ground-truth readers against each other; bad inputs; and
the binary end to end on a fabricated pcam-slide cohort (no model)."""

from __future__ import annotations

import csv
import json
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pcam_jax.camelyon import annotations as ann
from pcam_jax.camelyon import froc
from pcam_jax.camelyon.evaluate import decide, read_cohort, read_reference
from pcam_jax.camelyon.masks import read_mask_tiff
from pcam_jax.camelyon.synthetic import (
    feature,
    level0_mask,
    write_asap_xml,
    write_geojson,
    write_mask_tiff,
)
from pcam_jax.errors import AnnotationError, SlideError
from tests.helpers import run_in_process

PROG = "pcam-camelyon-eval"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --- the FROC by hand ------------------------------------------------------------------------


def test_slide_hits_inside_twice_itc_outside_and_normal():
    # mask at downsample 4: lesion 1 rows/cols 1-3, an ITC (label 2), lesion 3 (missed)
    labels = np.zeros((10, 10), np.int32)
    labels[1:4, 1:4] = 1
    labels[6:8, 6:8] = 2
    labels[1:3, 7:9] = 3
    det = np.array(
        [
            [0.9, 8, 8],  # row 2, col 2: lesion 1
            [0.6, 12.9, 5],  # row 1, col 3 (12.9 truncates to 12): lesion 1 again, 0.9 stays
            [0.7, 26, 26],  # row 6, col 6: the ITC, neither TP nor FP
            [0.4, 1, 38],  # row 9, col 0: background, FP
            [0.3, 100, 5],  # outside the mask: FP (the script would raise IndexError)
            [0.2, -5, 5],  # negative: FP (the script would wrap around)
        ]
    )
    hits = froc.slide_hits(det, labels, {2}, 4, True)
    assert hits.fp_probs.tolist() == [0.4, 0.3, 0.2]
    assert hits.tp_probs.dtype == np.float32
    assert hits.tp_probs.tolist() == [np.float32(0.9), 0.0, 0.0]
    assert hits.num_tumours == 2  # three labels, one ITC
    assert froc.detection_labels(det, labels, 4).tolist() == [1, 1, 2, 0, -1, -1]
    normal = froc.slide_hits(det, None, set(), 4, False)
    assert normal.fp_probs.tolist() == det[:, 0].tolist() and normal.num_tumours == 0


def test_a_detection_in_the_dilated_margin_is_a_true_positive():
    # px 7.5 um: margin distance 37.5 / 7.5 = 5 px (strictly less), ITC below 275 / 7.5 px
    tumour = np.zeros((100, 100), bool)
    tumour[30:70, 30:70] = True
    labels = froc.evaluation_mask(tumour, 7.5)
    assert labels.max() == 1 and froc.isolated_tumour_cells(labels, 7.5) == set()
    ds = 2
    at = np.array([[0.8, 2 * 50 + 1, 2 * 26 + 1], [0.6, 2 * 50 + 1, 2 * 25 + 1]])
    # row 26 is 4 px above the lesion (in the margin); row 25 is 5 px (not < 5: outside)
    hits = froc.slide_hits(at, labels, set(), ds, True)
    assert hits.tp_probs.tolist() == [np.float32(0.8)]
    assert hits.fp_probs.tolist() == [0.6]


def hand_cohort() -> list[froc.SlideHits]:
    """Four slides whose FROC is worked out by hand in test_froc_by_hand (probabilities are
    multiples of 1/32, exact in float32)."""
    # tumour slide 1 (hand labels): lesion A (label 1), lesion C (label 2), an ITC (label 3)
    l1 = np.zeros((20, 20), np.int32)
    l1[1:5, 1:5], l1[10:14, 1:5], l1[16:18, 16:18] = 1, 2, 3
    d1 = [
        [15 / 16, 9, 9],  # A
        [0.3, 13, 5],  # A again: only the max counts, 0.3 never becomes a threshold
        [0.5, 9, 45],  # C
        [0.7, 67, 67],  # the ITC: ignored, 0.7 never becomes a threshold
        [15 / 16, 60, 30],  # two FPs tied with A's probability
        [15 / 16, 61, 30],
    ]
    s1 = froc.slide_hits(np.array(d1), l1, {3}, 4, True)
    # tumour slide 2 (evaluation mask): lesions B and D, D hit in its dilated margin
    tumour = np.zeros((100, 160), bool)
    tumour[30:70, 10:50] = tumour[30:70, 100:140] = True
    l2 = froc.evaluation_mask(tumour, 7.5)
    assert l2.max() == 2 and froc.isolated_tumour_cells(l2, 7.5) == set()
    d2 = [[26 / 32, 2 * 30 + 1, 2 * 50]] + [[26 / 32, 2 * 80, 2 * 90]] * 3  # B, three FPs
    d2 += [[4 / 32, 2 * 142 + 1, 2 * 50]]  # D, 3 px right of its lesion: in the margin
    s2 = froc.slide_hits(np.array(d2), l2, set(), 2, True)
    # two normal slides
    d3 = [[20 / 32, 0, 0]] * 4 + [[16 / 32, 0, 0]] * 6
    d4 = [[8 / 32, 0, 0]] * 2 + [[4 / 32, 0, 0]] * 20
    s3 = froc.slide_hits(np.array(d3), None, set(), 4, False)
    s4 = froc.slide_hits(np.array(d4), None, set(), 4, False)
    assert s1.tp_probs.tolist() == [15 / 16, 0.5, 0.0] and s1.fp_probs.tolist() == [15 / 16] * 2
    assert sorted(s2.tp_probs.tolist()) == [4 / 32, 26 / 32] and len(s2.fp_probs) == 3
    return [s1, s2, s3, s4]


def test_froc_by_hand():
    cohort = hand_cohort()
    # FPs: 2 @ 30/32, 3 @ 26/32, 4 @ 20/32, 6 @ 16/32, 2 @ 8/32, 20 @ 4/32   (37)
    # TPs: 30/32 (A), 26/32 (B), 16/32 (C), 4/32 (D), 0 (the ITC's entry)    (4 lesions)
    # thresholds = sorted set minus its lowest (the 0): 4, 8, 16, 20, 26, 30 (/32)
    # t (/32):     4     8    16    20    26    30   (end)
    # FP >= t:    37    17    15     9     5     2     0   -> / 4 slides
    # TP >= t:     4     3     3     2     2     1     0   -> / 4 lesions
    thresholds, fp_counts, tp_counts = froc.froc_points(cohort)
    assert (thresholds * 32).tolist() == [4, 8, 16, 20, 26, 30]
    assert fp_counts.tolist() == [37, 17, 15, 9, 5, 2, 0]
    assert tp_counts.tolist() == [4, 3, 3, 2, 2, 1, 0]
    avg_fps, sens = froc.froc_curve(cohort)
    assert avg_fps.tolist() == [9.25, 4.25, 3.75, 2.25, 1.25, 0.5, 0.0]
    assert sens.tolist() == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.0]
    score, at = froc.froc_score(avg_fps, sens)
    # reversed: (0, 0) (0.5, .25) (1.25, .5) (2.25, .5) (3.75, .75) (4.25, .75) (9.25, 1)
    # 0.25 FP: halfway from (0, 0) to (0.5, .25)                   -> 0.125
    # 0.5 FP: on the point (0.5, .25)                               -> 0.25
    # 1 FP: (1 - .5) / (1.25 - .5) = 2/3 of the way .25 -> .5       -> .25 + .25 * 2/3 = 5/12
    # 2 FP: between (1.25, .5) and (2.25, .5)                       -> 0.5
    # 4 FP: between (3.75, .75) and (4.25, .75)                     -> 0.75
    # 8 FP: (8 - 4.25) / (9.25 - 4.25) = 3/4 of the way .75 -> 1     -> .75 + .25 * 3/4 = 0.9375
    expected = [0.125, 0.25, 5 / 12, 0.5, 0.75, 0.9375]
    np.testing.assert_allclose(at, expected, rtol=0, atol=1e-15)
    # (6 + 12 + 20 + 24 + 36 + 45) / 48 / 6 = 143 / 288
    assert score == pytest.approx(143 / 288, abs=1e-15)
    # n_slides is the script's len(FROC_data[0]): more slides, fewer FPs per slide
    avg8, _ = froc.froc_curve(cohort, n_slides=8)
    assert avg8.tolist() == [v / 2 for v in avg_fps.tolist()]


def test_froc_edge_cases():
    # beyond the curve np.interp holds the last sensitivity; without lesions the score is NaN
    one = [froc.SlideHits(np.array([0.5]), np.array([0.75, 0.0], np.float32), 2)]
    avg, sens = froc.froc_curve(one)
    # thresholds: 0.5, 0.75 -> FP 1, 0 ; TP 1, 1; then (0, 0)
    assert avg.tolist() == [1.0, 0.0, 0.0] and sens.tolist() == [0.5, 0.5, 0.0]
    score, at = froc.froc_score(avg, sens)
    assert at.tolist() == [0.5] * 6 and score == 0.5
    normal = [froc.SlideHits(np.array([0.5, 0.6]), np.zeros(0, np.float32), 0)]
    assert np.isnan(froc.froc_score(*froc.froc_curve(normal))[0])
    # float32 TP entries: a TP of 0.1 (float32 0.10000000149) and an FP of 0.1 are two
    # thresholds; at the FP's, the TP counts (float32 comparison), at the TP's the FP does not
    tie = [froc.SlideHits(np.array([0.1, 0.05]), np.array([0.1, 0.0], np.float32), 2)]
    thresholds, fps, tps = froc.froc_points(tie)
    assert thresholds.tolist() == [0.05, 0.1, float(np.float32(0.1))]
    assert fps.tolist() == [2, 1, 0, 0] and tps.tolist() == [1, 1, 1, 0]


def test_evaluation_downsample_uses_the_slides_resolution():
    assert froc.evaluation_downsample(0.243) == 32  # the official level 5
    assert froc.evaluation_downsample(0.972) == 8
    assert froc.evaluation_downsample(0.5) == 16
    assert froc.evaluation_downsample(0.226) == 32
    assert froc.evaluation_downsample(10.0) == 1


# --- the evaluation-mask rules ---------------------------------------------------------------


def test_lesions_closer_than_twice_the_margin_merge():
    # px 7.5 um: margin 5 px; lesion pixel centres 9 px apart (67.5 um) merge, 10 px do not
    for gap, expected in ((9, 1), (10, 2)):
        tumour = np.zeros((60, 120), bool)
        tumour[10:50, 10:50] = True
        tumour[10:50, 49 + gap : 89 + gap] = True
        assert froc.evaluation_mask(tumour, 7.5).max() == expected, gap


def test_isolated_tumour_cells_by_the_dilated_major_axis():
    # skimage's major axis by hand: a line of N pixels has variance (N^2 - 1) / 12 along it
    labels = np.zeros((5, 12), np.int32)
    labels[1, 1:11] = 1  # N = 10
    labels[3:5, 3:5] = 2  # 2 x 2: variances 1/4, 1/4 -> 4 sqrt(1/4) = 2
    np.testing.assert_allclose(
        froc.major_axis_lengths(labels), [4 * np.sqrt(99 / 12), 2.0], rtol=1e-14
    )
    # the threshold is strict: major < itc_um / px_um
    line = 4 * np.sqrt(99 / 12)
    assert froc.isolated_tumour_cells(labels, 1.0, itc_um=line) == {2}
    assert froc.isolated_tumour_cells(labels, 1.0, itc_um=line + 1e-9) == {1, 2}
    # with the real rules at 7.5 um: a 10 x 10 px (75 um) lesion dilates to about 19 px, a
    # major axis near 160 um: an ITC; a 1 x 40 px line (300 um long) is not
    tumour = np.zeros((60, 100), bool)
    tumour[10:20, 10:20] = True
    tumour[40, 40:80] = True
    labels = froc.evaluation_mask(tumour, 7.5)
    small = labels[15, 15]
    assert labels.max() == 2 and froc.isolated_tumour_cells(labels, 7.5) == {int(small)}


def test_eight_connectivity_and_filled_holes():
    # margin 1 um at 1 um/px: distance < 0.5, so the mask is the tumour itself
    tumour = np.zeros((10, 10), bool)
    tumour[1:3, 1:3] = tumour[3:5, 3:5] = True  # touching only at a corner
    assert froc.evaluation_mask(tumour, 1.0, margin_um=1.0).max() == 1
    ring = np.zeros((12, 12), bool)
    ring[2:9, 2:9] = True
    ring[4:7, 4:7] = False
    labels = froc.evaluation_mask(ring, 1.0, margin_um=1.0)
    assert labels[5, 5] == 1  # the hole is filled: a detection there is a TP


# --- against an independent implementation of Evaluation_FROC.py -----------------------------


def ref_evaluation_mask(tumour: np.ndarray, px_um: float) -> np.ndarray:
    """computeEvaluationMask with brute-force distances, a border flood fill and a breadth-first
    8-connected labelling."""
    h, w = tumour.shape
    threshold = 75 / (px_um * 2)
    pts = np.argwhere(tumour)
    d2 = np.full((h, w), np.inf)
    rr, cc = np.mgrid[:h, :w]
    for r, c in pts:
        d2 = np.minimum(d2, (rr - r) ** 2 + (cc - c) ** 2)
    binary = np.sqrt(d2) < threshold
    outside = np.zeros((h, w), bool)  # background reachable from the border (4-connected)
    queue = deque((r, c) for r in range(h) for c in range(w) if r in (0, h - 1) or c in (0, w - 1))
    while queue:
        r, c = queue.popleft()
        if 0 <= r < h and 0 <= c < w and not binary[r, c] and not outside[r, c]:
            outside[r, c] = True
            queue.extend(((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)))
    filled = ~outside
    labels = np.zeros((h, w), np.int32)
    n = 0
    for r in range(h):
        for c in range(w):
            if filled[r, c] and not labels[r, c]:
                n += 1
                labels[r, c] = n
                queue = deque([(r, c)])
                while queue:
                    y, x = queue.popleft()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            v, u = y + dy, x + dx
                            if 0 <= v < h and 0 <= u < w and filled[v, u] and not labels[v, u]:
                                labels[v, u] = n
                                queue.append((v, u))
    return labels


def ref_itc_list(labels: np.ndarray, px_um: float) -> list[int]:
    """computeITCList with the central moments written out and numpy's eigvalsh."""
    out = []
    for label in range(1, labels.max() + 1):
        pts = np.argwhere(labels == label).astype(float)
        mr, mc = pts[:, 0].sum() / len(pts), pts[:, 1].sum() / len(pts)
        mu20 = sum((r - mr) ** 2 for r, _ in pts)
        mu02 = sum((c - mc) ** 2 for _, c in pts)
        mu11 = sum((r - mr) * (c - mc) for r, c in pts)
        inertia = np.array([[mu20, mu11], [mu11, mu02]]) / len(pts)
        l1 = max(np.linalg.eigvalsh(inertia).max(), 0)
        if 4 * np.sqrt(l1) < 275 / px_um:
            out.append(label)
    return out


def ref_fp_tp(probs, xs, ys, is_tumor, mask, itcs, ds):
    """compute_FP_TP_Probs, out-of-mask detections counted as label 0 (see froc's docstring)."""
    max_label = int(np.amax(mask)) if is_tumor else 0
    fp_probs = []
    tp_probs = np.zeros((max_label,), dtype=np.float32)
    if is_tumor:
        for i in range(len(xs)):
            row, col = ys[i] // ds, xs[i] // ds
            inside = 0 <= row < mask.shape[0] and 0 <= col < mask.shape[1]
            hit = mask[row, col] if inside else 0
            if hit == 0:
                fp_probs.append(probs[i])
            elif hit not in itcs:
                if probs[i] > tp_probs[hit - 1]:
                    tp_probs[hit - 1] = probs[i]
    else:
        fp_probs = list(probs)
    return fp_probs, tp_probs, max_label - len(itcs)


def ref_compute_froc(froc_data):
    """computeFROC as the script has it. The script ran on numpy 1, where comparing an
    np.float32 scalar with a Python float was done in float64; numpy 2 does it in float32,
    so the sort takes key=float to keep the script's order."""
    unlisted_fps = [item for sublist in froc_data[1] for item in sublist]
    unlisted_tps = [item for sublist in froc_data[2] for item in sublist]
    total_fps, total_tps = [], []
    all_probs = sorted(set(unlisted_fps + unlisted_tps), key=float)
    for thresh in all_probs[1:]:
        total_fps.append((np.asarray(unlisted_fps) >= thresh).sum())
        total_tps.append((np.asarray(unlisted_tps, dtype=np.float32) >= thresh).sum())
    total_fps.append(0)
    total_tps.append(0)
    total_fps = np.asarray(total_fps) / float(len(froc_data[0]))
    total_sensitivity = np.asarray(total_tps) / float(sum(froc_data[3]))
    return total_fps, total_sensitivity


def random_case(rng: np.random.Generator):
    """A few slides: random blob masks (tumour) or none (normal), random detections."""
    slides = []
    for k in range(int(rng.integers(4, 8))):
        tumour = k < 2 or rng.random() < 0.5
        h, w = (int(v) for v in rng.integers(40, 64, 2))
        mask = np.zeros((h, w), bool)
        if tumour:
            rr, cc = np.mgrid[:h, :w]
            for _ in range(int(rng.integers(1, 6))):
                r0, c0, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, 12)
                mask |= (rr - r0) ** 2 + ((cc - c0) * rng.uniform(0.4, 1)) ** 2 < rad**2
        ds = int(rng.choice([1, 2, 4]))
        n = int(rng.integers(0, 30))
        kind = rng.integers(0, 3, n)
        probs = np.where(
            kind == 0,
            rng.uniform(0, 1, n),
            np.where(kind == 1, rng.integers(0, 9, n) / 8, rng.integers(0, 11, n) / 10),
        )
        xs = rng.uniform(-2 * ds, (w + 2) * ds, n)
        ys = rng.uniform(-2 * ds, (h + 2) * ds, n)
        slides.append((tumour, mask, ds, probs, xs, ys))
    return slides


@pytest.mark.parametrize("seed", range(6))
def test_froc_equals_an_independent_implementation_of_the_script(seed):
    rng = np.random.default_rng(seed)
    px_um = float(rng.choice([7.776, 10.0, 15.552]))
    froc_data = [[], [], [], []]
    mine = []
    for k, (tumour, mask, ds, probs, xs, ys) in enumerate(random_case(rng)):
        xi = [int(float(x)) for x in xs]  # readCSVContent's int(float(...))
        yi = [int(float(y)) for y in ys]
        if tumour:
            ref_labels = ref_evaluation_mask(mask, px_um)
            ref_itcs = ref_itc_list(ref_labels, px_um)
            labels = froc.evaluation_mask(mask, px_um)
            itcs = froc.isolated_tumour_cells(labels, px_um)
            assert labels.max() == ref_labels.max() and len(itcs) == len(ref_itcs)
            # the same regions (the numbering may differ): same partition of the pixels
            assert np.array_equal(labels > 0, ref_labels > 0)
        else:
            ref_labels, ref_itcs, labels, itcs = None, [], None, set()
        fp, tp, n = ref_fp_tp(list(map(float, probs)), xi, yi, tumour, ref_labels, ref_itcs, ds)
        froc_data[0].append(f"slide{k}")
        froc_data[1].append(fp)
        froc_data[2].append(tp)
        froc_data[3].append(n)
        det = np.stack([probs, xs, ys], 1).reshape(-1, 3)
        hits = froc.slide_hits(det, labels, itcs, ds, tumour)
        assert sorted(hits.fp_probs.tolist()) == sorted(fp) and hits.num_tumours == n
        mine.append(hits)
    assert sum(froc_data[3]) > 0
    ref_fps, ref_sens = ref_compute_froc(froc_data)
    avg_fps, sens = froc.froc_curve(mine)
    np.testing.assert_array_equal(avg_fps, ref_fps)
    np.testing.assert_array_equal(sens, ref_sens)
    ref_score = 0.0
    for rate in [0.25, 0.5, 1, 2, 4, 8]:
        ref_score += np.interp(rate, ref_fps[::-1], ref_sens[::-1])
    assert abs(froc.froc_score(avg_fps, sens)[0] - ref_score / 6.0) <= 1e-12


# --- the readers -----------------------------------------------------------------------------

SIZE = (1600, 1200)  # level-0 (w, h) of the reader tests


def reader_polygons() -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """An irregular 12-gon with a hole, a tilted quadrilateral and a triangle (level-0)."""
    rng = np.random.default_rng(3)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 12))
    rad = rng.uniform(200, 320, 12)
    big = np.stack([520 + rad * np.cos(ang), 560 + rad * np.sin(ang)], 1)
    # vertices off the half-pixel grid, so that no pixel centre lies on an edge (where the
    # even-odd conventions of matplotlib and pcam_jax may differ)
    hole = np.array([[470.3, 520.1], [600.2, 500.7], [620.9, 640.3], [480.6, 610.45]])
    quad = np.array([[1100.3, 150.1], [1520.2, 260.7], [1450.1, 560.3], [1080.7, 470.2]])
    tri = np.array([[1000.37, 760.2], [1500.1, 820.9], [1180.6, 1150.25]])
    return [(big, [hole]), (quad, []), (tri, [])]


def test_the_three_readers_agree(tmp_path):
    polys = reader_polygons()
    (big, [hole]), (quad, _), (tri, _) = polys
    xml = write_asap_xml(tmp_path / "s.xml", [big, quad, tri], [hole], ["_0", "_1", "Tumor"])
    geo = write_geojson(
        tmp_path / "s.geojson",
        [
            feature([big, hole]),  # classified Tumor, with its hole
            feature([], cls=None, multi=[[quad], [tri]]),  # unclassified: tumour
            feature([np.array([[0.0, 0], [90, 0], [90, 90]])], cls="Stroma"),  # skipped
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}},
        ],
        bare_list=True,  # as QuPath's "Export objects" writes it
    )
    mask0 = level0_mask(polys, SIZE)
    tif = write_mask_tiff(tmp_path / "s_mask.tif", mask0)  # levels at 1 and 4, tiled: OpenSlide
    ones = write_mask_tiff(tmp_path / "ones.tif", mask0, value=1, tiled=False)  # tifffile

    r_xml, r_geo = ann.read_asap_xml(xml), ann.read_qupath_geojson(geo)
    assert (len(r_xml.tumour), len(r_xml.exclusion)) == (3, 1)
    assert (len(r_geo.tumour), len(r_geo.exclusion), r_geo.skipped) == (3, 0, 2)
    np.testing.assert_array_equal(r_xml.tumour[0].exterior, big)  # sorted by Order

    m_xml = ann.rasterise(r_xml, SIZE, 4)
    m_geo = ann.rasterise(r_geo, SIZE, 4)
    m_tif, m_one = read_mask_tiff(tif, 4), read_mask_tiff(ones, 4)
    assert m_xml.shape == m_geo.shape == m_tif.shape == (300, 400)
    assert np.array_equal(m_xml, m_geo)
    assert np.array_equal(m_tif, m_one)
    assert iou(m_xml, m_tif) >= 0.99 and iou(m_geo, m_tif) >= 0.99
    assert not m_xml[560 // 4, 540 // 4]  # inside the hole
    # no level at 8: the level at 4 reduced by "any" over 2 x 2 blocks
    level4 = mask0[2::4, 2::4]
    assert np.array_equal(read_mask_tiff(tif, 8), level4.reshape(150, 2, 200, 2).any((1, 3)))
    assert iou(read_mask_tiff(tif, 8), ann.rasterise(r_xml, SIZE, 8)) >= 0.95
    # at level 0 the rasteriser is the pixel-centre rule exactly
    assert np.array_equal(ann.rasterise(r_xml, SIZE, 1), mask0)


def test_pcam_slides_tumour_geojson_reads_back_cell_for_cell(tmp_path):
    from pcam_jax.wsi.outputs import tumour_geojson

    p = np.zeros((12, 14), np.float32)
    p[1:10, 1:10] = 0.9  # a ring of tumour cells...
    p[3:8, 3:8] = 0.1  # ...around a hole...
    p[5, 5] = 0.95  # ...with an island in it
    p[2, 12] = 0.7
    p[0, 0] = np.nan
    result = SimpleNamespace(probabilities=p, geometry=SimpleNamespace(cell0=32.0, mpp0=0.25))
    path = tmp_path / "tumour.geojson"
    path.write_text(json.dumps(tumour_geojson(result, 0.5)))
    regions = ann.read_qupath_geojson(path)
    mask = ann.rasterise(regions, (14 * 32, 12 * 32), 32)
    assert np.array_equal(mask, np.nan_to_num(p) >= 0.5)  # the island survives the hole


def test_mask_tiffs_in_strips_and_a_slide_given_as_a_mask(tmp_path, monkeypatch):
    from pcam_jax.camelyon import masks
    from pcam_jax.camelyon.synthetic import write_slide

    mask0 = np.zeros((1000, 1500), bool)
    mask0[100:400, 200:701] = True
    tif = write_mask_tiff(tmp_path / "m_mask.tif", mask0, value=1)
    whole = [read_mask_tiff(tif, ds) for ds in (1, 4, 8)]
    monkeypatch.setattr(masks, "READ_PIXELS", 3000)  # OpenSlide reads of 2 to 8 rows
    for ds, expected in zip((1, 4, 8), whole, strict=True):
        assert np.array_equal(read_mask_tiff(tif, ds), expected)
    assert np.array_equal(whole[0], mask0)
    assert whole[1].sum() == 75 * 125 and whole[2].shape == (125, 188)  # ceil(1500 / 8) = 188
    image = np.full((512, 512, 3), 255, np.uint8)
    image[100:300, 100:300] = (200, 120, 180)  # stained tissue
    slide = write_slide(tmp_path / "slide.tif", image, 0.5)
    with pytest.raises(AnnotationError, match="slide.tif: has colour"):
        read_mask_tiff(slide, 4)


# --- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, needles",
    [
        ("bad.xml", "<ASAP_Annotations><Annotations>", ["bad.xml", "not well-formed XML"]),
        (
            "nan.xml",
            '<ASAP_Annotations><Annotations><Annotation Name="A1" PartOfGroup="_0">'
            '<Coordinates><Coordinate Order="0" X="1" Y="1"/><Coordinate Order="1" X="abc" '
            'Y="2"/><Coordinate Order="2" X="5" Y="9"/></Coordinates></Annotation>'
            "</Annotations></ASAP_Annotations>",
            ["nan.xml", "'A1'", "Coordinate 1", "X='abc'", "not a number"],
        ),
        (
            "group.xml",
            '<ASAP_Annotations><Annotations><Annotation Name="A1" PartOfGroup="Stroma">'
            '<Coordinates><Coordinate Order="0" X="1" Y="1"/><Coordinate Order="1" X="4" '
            'Y="2"/><Coordinate Order="2" X="5" Y="9"/></Coordinates></Annotation>'
            "</Annotations></ASAP_Annotations>",
            ["group.xml", "'Stroma'", "not a known group"],
        ),
        (
            "empty.xml",
            "<ASAP_Annotations><Annotations/></ASAP_Annotations>",
            ["empty.xml", "no tumour polygons"],
        ),
        (
            "points.geojson",
            json.dumps(
                {
                    "type": "FeatureCollection",
                    "features": [
                        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}
                    ],
                }
            ),
            ["points.geojson", "no tumour polygons", "1 feature"],
        ),
        (
            "ring.geojson",
            json.dumps(
                [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]},
                    }
                ]
            ),
            ["ring.geojson", "feature 0, ring 0", "at least 3"],
        ),
        ("text.geojson", "{not json", ["text.geojson", "not valid JSON"]),
    ],
)
def test_bad_ground_truth_is_refused_naming_the_file(tmp_path, name, text, needles):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AnnotationError) as e:
        ann.read_regions(path)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_missing_ground_truth_files():
    with pytest.raises(AnnotationError, match="nowhere.xml: no such file"):
        ann.read_asap_xml("/nowhere.xml")
    with pytest.raises(AnnotationError, match="nowhere_mask.tif: no such file"):
        read_mask_tiff("/nowhere_mask.tif", 4)


def test_reference_list_decides_tumour_and_normal(tmp_path):
    ref = tmp_path / "reference.csv"
    ref.write_text("Test_001,Tumor,Macro,Primary\nTest_002,Normal,,\nTest_003.tif,Normal,,\n")
    assert read_reference(ref) == {"Test_001": True, "Test_002": False, "Test_003.tif": False}
    plain = tmp_path / "normals.txt"
    plain.write_text("# normal slides\nNormal_001\n\nNormal_002\n")
    assert read_reference(plain) == {"Normal_001": False, "Normal_002": False}
    stems = ["Test_001", "Test_002", "Test_003", "Test_004"]
    cohort = SimpleNamespace(slides=[SimpleNamespace(stem=s) for s in stems])
    files = {
        "test_001.xml": tmp_path / "Test_001.xml",
        "orphan_mask.tif": tmp_path / "Orphan_Mask.tif",
    }
    warnings = []
    decided, undecided, orphans = decide(cohort, files, read_reference(ref), warnings.append)
    assert [(s.stem, gt) for s, gt in decided] == [
        ("Test_001", tmp_path / "Test_001.xml"),
        ("Test_002", None),
        ("Test_003", None),
    ]
    assert undecided == ["Test_004"] and orphans == ["Orphan"]
    assert len(warnings) == 2
    files["test_002_mask.tif"] = tmp_path / "Test_002_Mask.tif"
    with pytest.raises(AnnotationError, match="Test_002: listed as Normal"):
        decide(cohort, files, read_reference(ref), warnings.append)
    # a header line naming its columns is skipped; a first line with a wrong label is refused,
    # not taken for a header
    ref.write_text("image,label\nTest_001,Tumor\n")
    assert read_reference(ref) == {"Test_001": True}
    ref.write_text("Test_001,Tumour-ish\nTest_002,Normal\n")
    with pytest.raises(AnnotationError, match=r"reference.csv:1: label 'Tumour-ish'"):
        read_reference(ref)


# --- the binary end to end -------------------------------------------------------------------

MPP = 0.972  # evaluation downsample 8, pixel 7.776 um: margin 4.82 px, ITC below 35.4 px
SIDE = 2048


def square(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def write_prediction(
    root: Path, stem: str, detections: list, slide: str, side: int = SIDE, mpp: float = MPP
) -> None:
    folder = root / stem
    folder.mkdir(parents=True)
    summary = {
        "slide": slide,
        "score_max": 0.0,  # slide_scores.csv wins
        "level0_mpp": mpp,
        "grid": [side // 32, side // 32],
        "cell_size_level0_px": 32.0,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "detections.csv").write_text("".join(f"{p!r},{x},{y}\n" for p, x, y in detections))


def write_scores(
    pred: Path, scores: dict[str, float], failed: dict[str, str] | None = None
) -> None:
    """slide_scores.csv and slides.csv of a fabricated cohort: the slides in `scores` done,
    those in `failed` failed with their error."""
    (pred / "slide_scores.csv").write_text("".join(f"{k},{v}\n" for k, v in scores.items()))
    with open(pred / "slides.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [["slide", "status", "score_max", "error"]]
            + [[f"/data/{k}.tif", "done", v, ""] for k, v in scores.items()]
            + [[f"/data/{k}.tif", "failed", "", e] for k, e in (failed or {}).items()]
        )


def camelyon_eval(pred: Path, gt: Path, out: Path, *flags: str):
    """pcam-camelyon-eval in this process on PRED against GT into OUT, with `flags`."""
    return run_in_process(
        "camelyon_eval", f"--predictions={pred}", f"--ground_truth={gt}", f"--out={out}", *flags
    )


def fabricated_cohort(tmp_path: Path) -> tuple[Path, Path]:
    """Five slides (T1 ASAP XML with its slide file, T2 a mask TIFF, T3 GeoJSON whose slide
    is gone, N1 and N2 normal), a failed slide, and a ground truth without predictions."""
    from pcam_jax.camelyon.synthetic import write_slide

    pred, gt = tmp_path / "pred", tmp_path / "gt"
    gt.mkdir()
    slide_file = write_slide(
        tmp_path / "T1.tif", np.full((SIDE, SIDE, 3), 240, np.uint8), MPP, "zlib"
    )
    l1, itc, l2 = (
        square(200, 200, 600, 600),
        square(1500, 300, 1540, 340),
        square(1200, 1200, 1600, 1600),
    )
    write_asap_xml(gt / "T1.xml", [l1, itc, l2])
    mask = np.zeros((SIDE, SIDE), bool)
    mask[800:1200, 1000:1400] = True
    write_mask_tiff(gt / "T2_Mask.tif", mask)  # levels 1 and 4: read at 8 by reduction
    write_geojson(gt / "T3.geojson", [feature([square(300, 1300, 700, 1700)])])
    write_asap_xml(gt / "Orphan.xml", [l1])
    t1 = [(0.9, 400, 400), (0.6, 410, 390), (0.7, 1520, 320), (0.4, 1000, 1800), (0.95, 620, 400)]
    write_prediction(pred, "T1", t1, str(slide_file))
    write_prediction(pred, "T2", [(0.8, 1200, 1000), (0.3, 100, 100)], "/gone/T2.tif")
    write_prediction(pred, "T3", [(0.5, 1800, 200)], "/gone/T3.tif")
    write_prediction(pred, "N1", [(0.85, 1000, 1000), (0.2, 50, 60)], "/gone/N1.tif")
    write_prediction(pred, "N2", [], "/gone/N2.tif")
    scores = {"T1": 0.9, "T2": 0.8, "T3": 0.5, "N1": 0.85, "N2": 0.2}
    write_scores(pred, scores, failed={"Broken": "no tissue"})
    return pred, gt


def test_the_binary_on_a_fabricated_cohort(tmp_path):
    """Each slide at its own 0.972 um/px and any mask value above 0 (the options; the figures
    the evaluation gave before the challenge's rules became the default)."""
    pred, gt = fabricated_cohort(tmp_path)
    out = tmp_path / "eval"
    r = camelyon_eval(
        pred, gt, out, "--bootstrap=200", "--resolution=slide", "--mask_values=nonzero"
    )
    assert r.returncode == 0, r.stderr
    assert "Broken" in r.stderr and "Orphan" in r.stderr  # the failed slide, the orphan
    assert "T3: slide '/gone/T3.tif' cannot be opened" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "froc.json", "froc.png", "froc_curve.csv", "roc.png", "slide_auc.json"
    ]  # fmt: skip
    auc = json.loads((out / "slide_auc.json").read_text())
    # tumour 0.9, 0.8, 0.5 against normal 0.85, 0.2: 4 of the 6 pairs ordered
    assert auc["auc"] == pytest.approx(4 / 6, abs=1e-12)
    assert (auc["n_tumour"], auc["n_normal"], auc["slide_score"]) == (3, 2, "slide_scores.csv")
    lo, hi = auc["auc_ci95"]
    assert 0 <= lo <= hi <= 1 and auc["bootstrap_resamples"] > 100
    assert auc["skipped"] == {"failed": ["Broken"], "undecided": [], "no_predictions": ["Orphan"]}
    result = json.loads((out / "froc.json").read_text())
    # TP entries: T1 [0.95 (its margin), 0 (ITC), 0 (missed)], T2 [0.8], T3 [0]: 4 lesions
    # FPs: 0.4 (T1), 0.3 (T2), 0.5 (T3), 0.85 and 0.2 (N1); 5 slides
    # t:        0.2  0.3  0.4  0.5  0.8  0.85  0.95  end
    # FP >= t:    5    4    3    2    1    1     0    0   -> / 5: 1, .8, .6, .4, .2, .2, 0, 0
    # TP >= t:    2    2    2    2    2    1     1    0   -> / 4: .5 (x5), .25, .25, 0
    # every rate from 0.25 up lies where the sensitivity is .5
    assert result["froc"] == pytest.approx(0.5, abs=1e-12)
    assert result["sensitivities"] == [0.5] * 6
    assert (result["lesions"], result["itcs"], result["false_positives"]) == (4, 1, 5)
    rows = {s["slide"]: s for s in result["slides"]}
    assert rows["T1"]["fp"] == 1 and rows["T1"]["itc_hits"] == 1
    assert rows["T1"]["lesions"] == 2 and rows["T1"]["lesions_detected"] == 1
    assert rows["T1"]["downsample"] == 8 and rows["T1"]["pixel_um"] == pytest.approx(7.776)
    assert (rows["T2"]["lesions_detected"], rows["T3"]["lesions_detected"]) == (1, 0)
    assert rows["N1"]["fp"] == 2 and rows["N2"]["detections"] == 0
    with open(out / "froc_curve.csv") as f:
        curve = list(csv.DictReader(f))
    assert [float(c["avg_fps"]) for c in curve] == [1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.0, 0.0]
    assert curve[-1]["threshold"] == "inf"
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{PROG}: slide AUC 0.667 (95% CI ")
    assert "FROC 0.500 on 5 slides (3 tumour, 2 normal)" in line


def test_a_mask_with_levels_padded_to_whole_tiles_is_read_where_the_lesion_is(tmp_path):
    """A 1800-pixel mask whose levels are padded to 256-pixel tiles (level 8: 225 -> 256 rows,
    OpenSlide's ratio 7.03): read at its true downsample the lesion is at level-8 rows 175-211
    and the detection at y = 1650 (row 206) finds it; read at 7.03 the lesion would sit at rows
    154-185 and the detection be a false positive (FROC 0, not 1)."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    gt.mkdir()
    mask = np.zeros((1800, 1800), bool)
    mask[1400:1700, 1100:1300] = True
    write_mask_tiff(gt / "T1_Mask.tif", mask, (1, 2, 4, 8), padded=True)
    write_prediction(pred, "T1", [(0.9, 1200, 1650)], "/gone/T1.tif", side=1800)
    write_prediction(pred, "N1", [(0.2, 500, 500)], "/gone/N1.tif", side=1800)
    write_scores(pred, {"T1": 0.9, "N1": 0.1})
    out = tmp_path / "eval"
    r = camelyon_eval(
        pred,
        gt,
        out,
        "--resolution=slide",  # at 0.972 um/px: the lesion is no ITC
    )
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "froc.json").read_text())
    rows = {s["slide"]: s for s in result["slides"]}
    assert (rows["T1"]["lesions"], rows["T1"]["lesions_detected"], rows["T1"]["fp"]) == (1, 1, 0)
    assert result["froc"] == 1.0  # the lesion found above the one false positive (0.2, N1)


def script_froc(slides: list[tuple[Path | None, list]], resolution: float, tumour) -> float:
    """Evaluation_FROC.py's rules, ported: each tumour slide's mask TIFF read as the script
    reads it (level 5 through OpenSlide, channel 0; `tumour` picks the pixels: the script's
    distance to ``255 - value == 0`` is ``value == 255``), at level-0 `resolution` um/px for
    every slide, its evaluation mask, ITCs, hits and curve by the loop-by-loop helpers above,
    and the score interpolated at the six rates."""
    import openslide

    data: list[list] = [[], [], [], []]
    for k, (mask_path, dets) in enumerate(slides):
        labels, itcs = None, []
        if mask_path is not None:
            with openslide.OpenSlide(str(mask_path)) as s:
                pixels = np.asarray(s.read_region((0, 0), 5, s.level_dimensions[5]))[:, :, 0]
            px = resolution * 2**5
            labels = ref_evaluation_mask(tumour(pixels), px)
            itcs = ref_itc_list(labels, px)
        probs = [float(p) for p, _, _ in dets]
        xs, ys = [int(float(x)) for _, x, _ in dets], [int(float(y)) for _, _, y in dets]
        fp, tp, n = ref_fp_tp(probs, xs, ys, mask_path is not None, labels, itcs, 2**5)
        for i, v in enumerate((f"slide{k}", fp, tp, n)):
            data[i].append(v)
    fps, sens = ref_compute_froc(data)
    return float(np.mean([np.interp(r, fps[::-1], sens[::-1]) for r in froc.FP_RATES]))


def test_the_default_is_the_challenges_script_and_the_options_the_earlier_rules(tmp_path):
    """A hand case that separates the rules. T1's level 0 is 0.226 um/px (as CAMELYON16's
    Utrecht slides); its mask's level 5 is 255 on a 26-pixel core and 128 on an 8-pixel rim
    (the grey a resampled level leaves), and its one detection lies 5 level-5 pixels right of
    the core: outside the script's margin of 4.82 pixels (0.243 um/px, the 255 pixels) and so a
    false positive; inside it at the slide's own 0.226 (5.18 pixels), or on the rim when any
    value above 0 is tumour. N1 (normal) holds one false positive at 0.2."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    gt.mkdir()
    level5 = np.zeros((64, 64), np.uint8)
    level5[8:50, 8:50] = 128
    level5[16:42, 16:42] = 255
    mask0 = np.kron(level5, np.ones((32, 32), np.uint8))
    mask_path = write_mask_tiff(gt / "T1_Mask.tif", mask0, (1, 2, 4, 8, 16, 32), value=1)
    t1, n1 = [(0.9, 46 * 32 + 16, 29 * 32 + 16)], [(0.2, 100, 100)]
    write_prediction(pred, "T1", t1, "/gone/T1.tif", side=2048, mpp=0.226)
    write_prediction(pred, "N1", n1, "/gone/N1.tif", side=2048, mpp=0.226)
    write_scores(pred, {"T1": 0.9, "N1": 0.2})
    cases = {
        "default": ([], 0.243, lambda v: v == 255),
        "slide": (["--resolution=slide"], 0.226, lambda v: v == 255),
        "nonzero": (["--mask_values=nonzero"], 0.243, lambda v: v > 0),
        "both": (["--resolution=slide", "--mask_values=nonzero"], 0.226, lambda v: v > 0),
    }
    got = {}
    for name, (flags, resolution, tumour) in cases.items():
        out = tmp_path / f"eval_{name}"
        r = camelyon_eval(pred, gt, out, "--bootstrap=0", *flags)
        assert r.returncode == 0, r.stderr
        result = json.loads((out / "froc.json").read_text())
        got[name] = result["froc"]
        port = script_froc([(mask_path, t1), (None, n1)], resolution, tumour)
        assert got[name] == pytest.approx(port, abs=1e-12), name
        rules = result["evaluation"]
        assert rules["resolution"] == ("slide" if "--resolution=slide" in flags else "official")
        assert "interpolated" in rules["score"] and "NCRF" in rules["score"]
        if not flags:
            assert rules["level0_mpp"] == 0.243 and rules["mask_tumour"] == "255"
            assert "evaluated at 0.243" in r.stderr  # the slide says 0.226
    assert got == {"default": 0.0, "slide": 1.0, "nonzero": 1.0, "both": 1.0}


def test_a_tumour_slide_without_tumour_in_its_ground_truth_is_refused(tmp_path):
    """An empty mask (the script would measure distances to a pixel outside the image and
    invent an ITC in the top-left corner), and a 0/1 mask under the 255 rule."""
    for name, mask, hint in (
        ("empty", np.zeros((512, 512), np.uint8), "holds no tumour"),
        ("zero_one", np.pad(np.ones((64, 64), np.uint8), 224), "--mask_values=nonzero"),
    ):
        pred, gt = tmp_path / name / "pred", tmp_path / name / "gt"
        gt.mkdir(parents=True)
        write_mask_tiff(gt / "T1_Mask.tif", mask, (1, 4), value=1)
        write_prediction(pred, "T1", [(0.9, 20, 20)], "/gone/T1.tif", side=512, mpp=0.243)
        write_prediction(pred, "N1", [(0.2, 20, 20)], "/gone/N1.tif", side=512, mpp=0.243)
        write_scores(pred, {"T1": 0.9, "N1": 0.2})
        out = tmp_path / name / "eval"
        r = camelyon_eval(pred, gt, out)
        assert r.returncode == 1 and not out.exists(), r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert "T1" in line and "T1_Mask.tif" in line and hint in line, line
    # the 0/1 mask with the option: evaluated
    r = camelyon_eval(pred, gt, tmp_path / "ok", "--mask_values=nonzero")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("mask_half", "the mask is 1024 x 1024 level-0 pixels"),
        ("mask_double", "the mask is 4096 x 4096 level-0 pixels"),
        ("negative_detection", "detection at X=-5, Y=100 lies outside the slide"),
        ("far_detection", "detection at X=1e+300, Y=5 lies outside the slide"),
        ("far_vertex", "the ground truth reaches level-0 (1.00001e+07, 1.00001e+07), beyond"),
    ],
)
def test_impossible_inputs_are_refused_in_one_line_naming_the_file(tmp_path, case, needle):
    """A mask of half or double the slide's size (read as it was, a lesion would move or
    shrink), detections at a negative or a far coordinate, ground truth at 1e7 pixels beside an
    unreachable slide (its mask would need terabytes): one line each, no output."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    gt.mkdir()
    lesion = np.zeros((64, 64), bool)
    lesion[25:40, 30:45] = True
    t1 = [(0.9, -5, 100)] if case == "negative_detection" else [(0.9, 1200, 1000)]
    if case == "far_detection":
        t1 = [(0.9, 1e300, 5)]
    if case == "far_vertex":
        write_asap_xml(gt / "T1.xml", [square(1e7, 1e7, 1e7 + 64, 1e7 + 64)])
        named = "T1.xml"
    else:
        scale = {"mask_half": 16, "mask_double": 64}.get(case, 32)
        write_mask_tiff(gt / "T1_Mask.tif", np.kron(lesion, np.ones((scale, scale), bool)))
        named = "T1_Mask.tif" if case.startswith("mask") else "detections.csv"
    write_prediction(pred, "T1", t1, "/gone/T1.tif", side=2048, mpp=0.243)
    write_prediction(pred, "N1", [(0.2, 100, 100)], "/gone/N1.tif", side=2048, mpp=0.243)
    write_scores(pred, {"T1": 0.9, "N1": 0.2})
    out = tmp_path / "eval"
    r = camelyon_eval(pred, gt, out)
    assert r.returncode == 1 and not out.exists(), r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{PROG}: error: ") and needle in line and named in line, line


def test_results_inside_an_input_folder_are_refused(tmp_path):
    pred, gt = fabricated_cohort(tmp_path)
    for out, flag in ((gt, "--ground_truth"), (pred / "eval", "--predictions")):
        r = camelyon_eval(pred, gt, out)
        assert r.returncode == 1 and f"inside {flag}=" in r.stderr, r.stderr
    assert not (pred / "eval").exists()


def test_the_binary_refuses_bad_inputs_and_leaves_no_output(tmp_path):
    out = tmp_path / "eval"
    (tmp_path / "gt0").mkdir()
    r = camelyon_eval(tmp_path / "none", tmp_path / "gt0", out)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{PROG}: error: --predictions={tmp_path / 'none'}: no such folder" in r.stderr
    assert not out.exists()
    pred, gt = fabricated_cohort(tmp_path)
    (gt / "T3.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    r = camelyon_eval(pred, gt, out)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "T3.geojson: no tumour polygons" in r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".eval")]


def test_read_cohort_scores_and_missing_detections(tmp_path):
    pred, _ = fabricated_cohort(tmp_path)
    warnings: list[str] = []
    cohort = read_cohort(pred, "score_max", warnings.append)
    assert cohort.score_source == "summary.json:score_max"
    assert [s.score for s in cohort.slides] == [0.0] * 5 and cohort.failed == ["Broken"]
    (pred / "T2" / "detections.csv").unlink()
    with pytest.raises(SlideError, match="T2/detections.csv: missing"):
        read_cohort(pred, "file", warnings.append)
