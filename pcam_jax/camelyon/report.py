"""pcam-camelyon-eval's results and files: the slide-level AUC and the lesion-level FROC of a
cohort evaluated by ``camelyon.evaluate``, and ``run_camelyon_eval``, the binary's library
function.

OUT (new, or an empty folder) receives, written to a temporary folder beside it and renamed to
OUT only when all are done (``runtime.files.atomic_dir``), so that a failed run leaves none:

    slide_auc.json   the slide AUC (sklearn's roc_auc_score of the slide scores, tumour = 1),
                     its 95% bootstrap interval (``infer.metrics.binary_metrics``: percentiles
                     over resampled slides), the numbers of tumour and normal slides, where the
                     scores came from, each slide's label and score, the slides skipped
    roc.png          the slide-level ROC curve
    froc.json        the FROC score (mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 average false
                     positives per slide), the six sensitivities, the numbers of lesions and
                     isolated tumour cells, the rules applied ("evaluation": resolution, mask
                     values, pixel, margin, ITC size, the score's rule), and per slide:
                     detections, false positives, lesions, lesions detected, ITCs, detections
                     on ITCs, detections outside the mask
    froc.png         the FROC curve as the score interpolates it (log x), its points and the
                     six operating points marked
    froc_curve.csv   threshold, avg_fps, sensitivity, fp, tp: the script's curve, thresholds
                     ascending; the last row (threshold inf) is its appended (0, 0)

Numbers that are undefined (the AUC with one class only, the FROC without lesions) are JSON null.

Imports: camelyon.evaluate, camelyon.froc, infer.metrics, runtime, errors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.camelyon.evaluate import (
    OFFICIAL_RULES,
    Log,
    Rules,
    SlideEvaluation,
    evaluate_cohort,
    print_warning,
)
from pcam_jax.camelyon.froc import (
    FP_RATES,
    froc_curve,
    froc_points,
    froc_score,
)
from pcam_jax.errors import SlideError
from pcam_jax.infer.metrics import binary_metrics
from pcam_jax.runtime.files import atomic_dir, check_new_dir, write_csv, write_json
from pcam_jax.runtime.plotting import pyplot, save_figure


def _num(value: float) -> float | None:
    """A finite float, or None (JSON null) for NaN or infinity."""
    return float(value) if math.isfinite(value) else None


def slide_auc(
    evaluations: Sequence[SlideEvaluation],
    score_source: str,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """slide_auc.json's content (without "skipped")."""
    y = np.array([e.tumour for e in evaluations], np.int64)
    s = np.array([e.score for e in evaluations], np.float64)
    m = binary_metrics(y, s, n_bootstrap=n_bootstrap, seed=seed)
    ci = m.get("auc_ci95")
    return {
        "auc": _num(m["auc"]),
        "auc_ci95": ci,
        "bootstrap_resamples": m.get("auc_ci95_resamples", 0),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "n_slides": len(evaluations),
        "n_tumour": int(y.sum()),
        "n_normal": int(len(y) - y.sum()),
        "slide_score": score_source,
        "slides": [{"slide": e.stem, "tumour": e.tumour, "score": e.score} for e in evaluations],
    }


def froc_results(
    evaluations: Sequence[SlideEvaluation], rules: Rules = OFFICIAL_RULES
) -> tuple[dict[str, Any], list[list[Any]]]:
    """froc.json's content (without "skipped") and froc_curve.csv's rows."""
    hits = [e.hits for e in evaluations]
    thresholds, fp_counts, tp_counts = froc_points(hits)
    avg_fps, sensitivity = froc_curve(hits)
    score, at = froc_score(avg_fps, sensitivity)
    limits = [*thresholds.tolist(), math.inf]
    rows = [
        [repr(float(t)), repr(float(a)), repr(float(v)), int(f), int(p)]
        for t, a, v, f, p in zip(limits, avg_fps, sensitivity, fp_counts, tp_counts, strict=True)
    ]
    result = {
        "froc": _num(score),
        "fp_rates": list(FP_RATES),
        "sensitivities": [_num(v) for v in at],
        "n_slides": len(evaluations),
        "n_tumour": sum(e.tumour for e in evaluations),
        "n_normal": sum(not e.tumour for e in evaluations),
        "lesions": sum(e.hits.num_tumours for e in evaluations),
        "itcs": sum(e.itcs for e in evaluations),
        "false_positives": sum(len(e.hits.fp_probs) for e in evaluations),
        "evaluation": rules.describe(),
        "slides": [e.row() for e in evaluations],
    }
    return result, rows


def plot_roc(path: Path, evaluations: Sequence[SlideEvaluation], auc: float | None) -> None:
    """roc.png: the slide-level ROC curve (a note instead when one class is missing)."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    y = [e.tumour for e in evaluations]
    if auc is not None:
        fpr, tpr, _ = roc_curve(y, [e.score for e in evaluations])
        ax.plot(fpr, tpr, color="#b22222", label=f"AUC {auc:.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "one class only: no ROC", ha="center", va="center")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":")
    ax.set(xlabel="false positive rate (normal slides)", ylabel="true positive rate (tumour)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=f"slide-level ROC, {len(y)} slides")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_froc(path: Path, rows: Sequence[Sequence[Any]], froc: dict[str, Any]) -> None:
    """froc.png: sensitivity against average FPs per slide (log x), the six rates marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    # the curve as the score reads it: np.interp between the points (FPs ascending), drawn
    # densely so that the log axis shows it as it is; np.interp holds the last sensitivity
    fps = np.array([float(r[1]) for r in rows])[::-1]
    sens = np.array([float(r[2]) for r in rows])[::-1]
    right = max(16.0, float(fps.max(initial=0)) * 1.2)
    if np.isfinite(sens).all():
        xs = np.geomspace(0.1, right, 500)
        ax.plot(xs, np.interp(xs, fps, sens), "-", color="black", label="FROC curve")
        ax.plot(fps[fps > 0], sens[fps > 0], ".", color="black")
    rates = froc["fp_rates"]
    at = [np.nan if v is None else v for v in froc["sensitivities"]]
    ax.plot(rates, at, "o", color="#b22222", label="sensitivity at the six rates")
    ax.set_xscale("log")
    ax.set(xlim=(0.1, right), ylim=(0, 1.02))
    score = froc["froc"]
    ax.set(xlabel="average false positives per slide", ylabel="lesion sensitivity")
    ax.set_title(f"FROC {'n/a' if score is None else f'{score:.3f}'}, {froc['lesions']} lesions")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_report(
    out: Path,
    auc: dict[str, Any],
    froc: dict[str, Any],
    rows: Sequence[Sequence[Any]],
    evaluations: Sequence[SlideEvaluation],
) -> None:
    """The five files, written to a temporary folder beside `out` and renamed to `out`."""
    with atomic_dir(out) as tmp:
        write_json(tmp / "slide_auc.json", auc)
        plot_roc(tmp / "roc.png", evaluations, auc["auc"])
        write_json(tmp / "froc.json", froc)
        plot_froc(tmp / "froc.png", rows, froc)
        write_csv(tmp / "froc_curve.csv", ["threshold", "avg_fps", "sensitivity", "fp", "tp"], rows)


def run_camelyon_eval(
    predictions: str | Path,
    ground_truth: str | Path,
    out: str | Path,
    *,
    normal: str | Path | None = None,
    rules: Rules = OFFICIAL_RULES,
    slide_score: str = "file",
    n_bootstrap: int = 1000,
    seed: int = 0,
    log: Log = print_warning,
) -> dict[str, Any]:
    """pcam-camelyon-eval: evaluates PREDICTIONS against GROUND_TRUTH and writes OUT; returns
    {"slide_auc": slide_auc.json, "froc": froc.json}."""
    if n_bootstrap < 0:
        raise SlideError(f"--bootstrap={n_bootstrap}: expected 0 or more resamples")
    for flag, folder in (("--predictions", predictions), ("--ground_truth", ground_truth)):
        if Path(os.path.realpath(out)).is_relative_to(os.path.realpath(folder)):
            raise SlideError(
                f"--out={out}: inside {flag}={folder}; the results go to a folder of their own"
            )
    out = check_new_dir(out, SlideError)
    cohort, evaluations, skipped = evaluate_cohort(
        predictions,
        ground_truth,
        normal=normal,
        rules=rules,
        slide_score=slide_score,
        log=log,
    )
    auc = slide_auc(evaluations, cohort.score_source, n_bootstrap=n_bootstrap, seed=seed)
    froc, rows = froc_results(evaluations, rules)
    auc["skipped"] = froc["skipped"] = skipped
    write_report(out, auc, froc, rows, evaluations)
    return {"slide_auc": auc, "froc": froc}


def summary_line(result: dict[str, Any]) -> str:
    """`slide AUC 0.xxx (95% CI a-b), FROC 0.xxx on N slides (T tumour, N normal)`."""
    auc, froc = result["slide_auc"], result["froc"]
    if auc["auc"] is None:
        auc_text = "slide AUC n/a (one class only)"
    else:
        ci = auc["auc_ci95"]
        interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        auc_text = f"slide AUC {auc['auc']:.3f}{interval}"
    froc_text = "FROC n/a (no lesions)" if froc["froc"] is None else f"FROC {froc['froc']:.3f}"
    return (
        f"{auc_text}, {froc_text} on {auc['n_slides']} slides ({auc['n_tumour']} tumour, "
        f"{auc['n_normal']} normal)"
    )


__all__ = [
    "froc_results",
    "plot_froc",
    "plot_roc",
    "run_camelyon_eval",
    "slide_auc",
    "summary_line",
    "write_report",
]
