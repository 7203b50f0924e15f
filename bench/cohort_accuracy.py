"""Benchmark (not a test): slide AUC and FROC of models and modes on one synthetic cohort.

    python bench/cohort_accuracy.py [--tumour 10] [--normal 10] [--out DIR]
                                    [--runs bundled:p4resnet/windows bundled:effnet-lite0/windows
                                            bundled:p4resnet/dense bundled:p4resnet-valid/auto]

Writes a CAMELYON16-like cohort of REAL PCam valid patches (``pcam_jax.camelyon.synthetic
.write_cohort``: --tumour slides with tumour patches in a central square and their ASAP
annotations, --normal slides of normal patches only, each slide its own patches, 0.972 um/px,
JPEG tiles; the broken and resolution-less slides it adds are left out), then for each
MODEL/MODE of --runs runs ``pcam-slide FOLDER --model=MODEL --mode=MODE`` and
``pcam-camelyon-eval`` as the README's "Evaluate on CAMELYON16" does, and prints one Markdown
row per run: slide AUC with its bootstrap 95% CI, FROC, seconds. The mosaics' seams are where
windows and dense inference differ most (a dense cell sees the neighbouring patch); the cohort
is small, so read the CI before the AUC.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pcam_jax.camelyon.synthetic import write_cohort
from pcam_jax.data.subset import subset_root

RUNS = (
    "bundled:p4resnet/windows",
    "bundled:effnet-lite0/windows",
    "bundled:p4resnet/dense",
    "bundled:p4resnet-valid/auto",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tumour", type=int, default=10)
    ap.add_argument("--normal", type=int, default=10)
    ap.add_argument("--runs", nargs="+", default=list(RUNS), help="MODEL/MODE pairs")
    ap.add_argument("--out", type=Path, default=None, help="keep the cohort and outputs here")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="cohort_accuracy."))
    images, notes = work / "images", work / "annotations"
    cohort = write_cohort(
        subset_root(), images, tumour=args.tumour, normal=args.normal, annotations=notes
    )
    for path in cohort["broken"] + cohort["no_mpp"]:
        path.unlink()
    (notes / "nompp_001.xml").unlink()
    reference = work / "reference.csv"
    rows = [f"{p.stem},Tumor" for p in cohort["tumour"]]
    reference.write_text("\n".join(rows + [f"{p.stem},Normal" for p in cohort["normal"]]) + "\n")
    print(f"cohort: {args.tumour} tumour + {args.normal} normal slides in {work}\n")
    print("| model | mode | slide AUC (95% CI) | FROC | seconds |")
    print("|---|---|---|---:|---:|")
    for run in args.runs:
        model, mode = run.rsplit("/", 1)
        tag = run.replace(":", "_").replace("/", "_")
        predictions, evaluation = work / f"predictions_{tag}", work / f"eval_{tag}"
        t0 = time.time()
        cli = [sys.executable, "-m"]
        subprocess.run(
            [*cli, "pcam_jax.cli.slide", str(images), f"--out={predictions}"]
            + [f"--model={model}", f"--mode={mode}", "--noprogress"],
            check=True,
            capture_output=True,
        )
        seconds = time.time() - t0
        subprocess.run(
            [*cli, "pcam_jax.cli.camelyon_eval", f"--predictions={predictions}"]
            + [f"--ground_truth={notes}", f"--normal={reference}", f"--out={evaluation}"]
            # the synthetic slides are at 0.972 um/px, not CAMELYON16's 0.243
            + ["--resolution=slide"],
            check=True,
            capture_output=True,
        )
        auc = json.loads((evaluation / "slide_auc.json").read_text())
        froc = json.loads((evaluation / "froc.json").read_text())
        lo, hi = auc["auc_ci95"]
        print(
            f"| {model} | {mode} | {auc['auc']:.3f} ({lo:.3f}-{hi:.3f}) | {froc['froc']:.3f} | "
            f"{seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
