"""Benchmark (not a test): valid AUC against inference FLOPs per patch, so that a user can pick
a model by the cost they will pay on a whole slide (pcam-slide's cells/s follows inference
FLOPs).

    python bench/cost_parity.py --runs ../bench-runs/seed_comparison/runs \
        [--labels resnet p4resnet-cm cnn p4cnn ...] [--csv docs/results/cost_parity.csv]

Reads the finished runs of ``bench/learning_curve.py`` (one workdir per LABEL-s0, trained under
the same recipe and budget), loads each one's LAST checkpoint with its EMA weights (no choice
made on valid), and predicts the 3,000 valid patches of the real subset under the 8 D4
transforms of each patch (``pcam_jax.data.pipeline.d4_transform``). Rows:

  every model, single view          the identity view: the plain cost
  plain models, 2 / 4 / 8 views     {identity, mirror} / the 4 rotations / all of D4, the
                                    probabilities averaged: 2x / 4x / 8x the cost
  p4 models, 2 views                {identity, mirror}: exactly D4-invariant at 2x the cost
                                    (a p4 model is already invariant to the rotations)

p4m models are exactly D4-invariant, so their views agree and only the single view is listed.
Inference GFLOPs per patch = the forward GFLOPs of one 96x96 image (XLA's cost analysis) x
views. Writes the CSV (label, group, views, gflops, valid_auc) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

VIEWS = {  # name -> the (k, flip) D4 elements averaged
    1: [(0, False)],
    2: [(0, False), (0, True)],
    4: [(k, False) for k in range(4)],
    8: [(k, f) for k in range(4) for f in (False, True)],
}


def group_of(name: str) -> str:
    return "p4m" if name.startswith("p4m") else "p4" if name.startswith("p4") else "z2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--labels", nargs="+", default=None, help="default: every finished run")
    ap.add_argument("--csv", type=Path, default=REPO / "docs" / "results" / "cost_parity.csv")
    args = ap.parse_args()

    from models import flops_per_image

    from pcam_jax.data.pipeline import d4_transform
    from pcam_jax.data.sources import make_source
    from pcam_jax.data.subset import subset_root
    from pcam_jax.infer.load import load_workdir
    from pcam_jax.infer.metrics import binary_metrics

    valid = make_source("folder", subset_root(), "valid")
    images = valid.read_images(0, len(valid))
    labels = args.labels or sorted(
        p.name.removesuffix("-s0")
        for p in args.runs.glob("*-s0")
        if (p / "bench_run.json").is_file()
    )
    rows = []
    for label in labels:
        workdir = args.runs / f"{label}-s0"
        loaded = load_workdir(workdir, checkpoint="last")
        name = json.loads((workdir / "config.json").read_text())["model.name"]
        group = group_of(name)
        model = (
            loaded.model.clone(axis_name=None)
            if hasattr(loaded.model, "axis_name")
            else loaded.model
        )
        gflops = flops_per_image(model, loaded.variables, 96) / 1e9
        views = [1, 2, 4, 8] if group == "z2" else [1, 2] if group == "p4" else [1]
        needed = sorted({e for v in views for e in VIEWS[v]})
        probs = {}
        for k, flip in needed:
            batch = np.stack([d4_transform(x, k, flip) for x in images])
            probs[(k, flip)] = loaded.predict_images(batch)
        for v in views:
            p = np.mean([probs[e] for e in VIEWS[v]], axis=0)
            auc = binary_metrics(valid.labels, p, n_bootstrap=0)["auc"]
            rows.append(
                {
                    "label": label,
                    "group": group,
                    "views": v,
                    "gflops": round(gflops * v, 4),
                    "valid_auc": round(float(auc), 4),
                }
            )
            print(rows[-1], flush=True)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["gflops"]))
    print("\n| model | group | views | inference GFLOPs / patch | valid AUC |")
    print("|---|---|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["gflops"]):
        cells = f"{r['label']} | {r['group']} | {r['views']} | {r['gflops']:.3f}"
        print(f"| {cells} | {r['valid_auc']:.4f} |")


if __name__ == "__main__":
    main()
