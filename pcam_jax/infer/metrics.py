"""Patch- and slide-level metrics of binary tumour predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score


def binary_metrics(
    labels: np.ndarray,
    p_tumour: np.ndarray,
    *,
    threshold: float = 0.5,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC (sklearn), its 95% bootstrap interval, accuracy, NLL and the confusion matrix.

    labels: (N,) in {0, 1}; p_tumour: (N,) probabilities of class 1. The AUC is
    `sklearn.metrics.roc_auc_score(labels, p_tumour)` exactly; the interval is
    the 2.5/97.5 percentiles over `n_bootstrap` resamples of the patches.
    """
    labels = np.asarray(labels).astype(np.int64)
    p = np.asarray(p_tumour, np.float64)
    n = int(labels.shape[0])
    both = 0 < labels.sum() < n
    pred = (p >= threshold).astype(np.int64)
    eps = 1e-7
    clipped = np.clip(p, eps, 1 - eps)
    nll = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    tp = int(((pred == 1) & (labels == 1)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    out: dict[str, Any] = {
        "n": n,
        "auc": float(roc_auc_score(labels, p)) if both else float("nan"),
        "accuracy": float((pred == labels).mean()) if n else float("nan"),
        "nll": nll,
        "threshold": threshold,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
    }
    if both and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        aucs = []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, n)
            y = labels[idx]
            if 0 < y.sum() < n:
                aucs.append(roc_auc_score(y, p[idx]))
        lo, hi = np.percentile(aucs, [2.5, 97.5])
        out["auc_ci95"] = [float(lo), float(hi)]
        out["auc_ci95_resamples"] = len(aucs)
    return out


def slide_metrics(wsi: np.ndarray, tumor_patch: np.ndarray, p_tumour: np.ndarray) -> dict[str, Any]:
    """Slide-level results from patch probabilities and the PCam meta columns.

    A slide is positive when any of its patches has ``tumor_patch``; its score
    is the max (or the mean) of its patches' probabilities. Returns per-slide
    rows and the slide AUC of both scores (NaN when one class is missing).
    """
    wsi = np.asarray(wsi).astype(str)
    rows = []
    for name in np.unique(wsi):
        sel = wsi == name
        rows.append(
            {
                "wsi": str(name),
                "n_patches": int(sel.sum()),
                "has_tumour": bool(np.asarray(tumor_patch)[sel].any()),
                "p_max": float(p_tumour[sel].max()),
                "p_mean": float(p_tumour[sel].mean()),
            }
        )
    y = np.array([r["has_tumour"] for r in rows], np.int64)
    both = 0 < y.sum() < len(y)
    result: dict[str, Any] = {"n_slides": len(rows), "n_tumour_slides": int(y.sum())}
    for key in ("p_max", "p_mean"):
        score = np.array([r[key] for r in rows])
        result[f"auc_{key[2:]}"] = float(roc_auc_score(y, score)) if both else float("nan")
    result["slides"] = rows
    return result
