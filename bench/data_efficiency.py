"""Benchmark (not a test): when does equivariance pay? Valid AUC against the number of labelled
training patches, group (p4) against plain ResNets, on the real PCam subset.

    python bench/data_efficiency.py [--sizes 1000 3000 10000] [--out ../bench-runs/data_efficiency]
                                    [--only LABEL ...] [--seeds N ...] [--report-only]

The grid (GRID): class-balanced nested training subsets (``data.train_examples``, drawn with
``data.train_subset_seed`` = the run's seed, so the spread over seeds includes which patches
were drawn) of 1,000, 3,000 and 10,000 of the subset's 20,000 training patches; at each size

  resnet        the plain ResNet of configs/cpu_subset.py (16/32/64/128 channels, 308k params)
  p4resnet-cm   the p4 ResNet at the plain model's FLOPs (4/8/16/32 features x 4 rotations,
                77k params): what configs/cpu_subset.py trains
  p4resnet-2x   the p4 ResNet at about the plain model's parameters (8/16/32/64 features x 4:
                twice the channels, 4x the FLOPs), at 1,000 only (EQUAL_PARAMETER_SIZES)
  effnet-ft96   the ImageNet-pretrained EfficientNet-Lite0 fine-tuned at 96x96
                (configs/transfer_finetune.py, its own recipe): pretraining's point

with 3 seeds at 1,000 and 3,000 and 1 at 10,000 (SEEDS). Every run is the cpu_subset recipe
(AdamW peak 4e-3, warm-up + cosine, EMA, D4 + HED + colour augmentation) trained for EPOCHS
epochs of its subset or the 28-minute budget, whichever is shorter (``max_train_steps`` caps the
``train_minutes`` plan), so the schedule always runs to its end. The full 20,000 is the existing
point of BENCHMARKS.md ("Accuracy per minute": 28-minute runs at peak 4e-3, read from
docs/results/learning_curve_seeds_2026-11-27_summary.csv; for effnet-ft96 "Transfer learning",
read from docs/results/transfer_summary.csv).

Resume across sessions: each finished run is a row of docs/results/data_efficiency_runs.csv (the
summary kept in the repository); a run already there is not trained again, so the grid can be
run piecewise, one session at a time. The workdirs and training logs stay under --out, outside
the repository. ``--report-only`` trains nothing and writes, from the CSV, the table
(docs/results/data_efficiency.md, which ends with one verdict per size: a lead only when every
seed of one model lies above every seed of the other, else a tie; and the crossover, if any)
and the PNG (docs/results/data_efficiency.png). No test split is used; valid
is the 3,000 patches of the subset's valid split, and nothing is selected on it (the final EMA
checkpoint of every run is the one reported).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

from learning_curve import CANDIDATES, SUBSET, run_candidate, run_dir  # bench/, beside this file

REPO = Path(__file__).resolve().parents[1]

RUNS_CSV = REPO / "docs" / "results" / "data_efficiency_runs.csv"
TABLE = REPO / "docs" / "results" / "data_efficiency.md"
PLOT = REPO / "docs" / "results" / "data_efficiency.png"
MINUTES = 28.0
EPOCHS = 60
BATCH = 64
# effnet-ft96: the ImageNet-pretrained EfficientNet-Lite0 fine-tuned (configs/transfer_finetune.py)
MODELS = ("resnet", "p4resnet-cm", "p4resnet-2x", "effnet-ft96")
SEEDS = {1000: (0, 1, 2), 3000: (0, 1, 2), 10000: (0,)}  # size -> seeds of every model
# p4resnet-2x (equal parameters, 4x the FLOPs) only where labels are scarcest: at 1,000 it ties
# the plain ResNet, and at 3,000 each of its runs would take the whole 28-minute budget
EQUAL_PARAMETER_SIZES = (1000,)
# the full training split: BENCHMARKS.md "Accuracy per minute", 28-minute runs at peak 4e-3, and
# "Transfer learning" (bench/learning_curve.py's summary of the transfer runs), file -> labels
FULL_SOURCES: dict[Path, dict[str, str]] = {
    REPO / "docs" / "results" / "learning_curve_seeds_2026-11-27_summary.csv": {
        "resnet-lr4e-3": "resnet",
        "p4resnet-lr4e-3": "p4resnet-cm",
    },
    REPO / "docs" / "results" / "transfer_summary.csv": {"effnet-ft96": "effnet-ft96"},
}
FIELDS = (
    "size", "model", "seed", "val_auc", "steps", "epochs", "wall_minutes", "images_per_second",
    "machine", "date",
)  # fmt: skip


def grid(sizes: list[int]) -> list[tuple[int, str, int]]:
    """(size, model, seed) of every run, smallest sizes first."""
    runs = []
    for size in sizes:
        for model in MODELS:
            if model == "p4resnet-2x" and size not in EQUAL_PARAMETER_SIZES:
                continue
            runs += [(size, model, seed) for seed in SEEDS.get(size, (0,))]
    return runs


def read_runs() -> dict[tuple[int, str, int], dict[str, str]]:
    if not RUNS_CSV.is_file():
        return {}
    with open(RUNS_CSV) as f:
        return {(int(r["size"]), r["model"], int(r["seed"])): r for r in csv.DictReader(f)}


def write_runs(runs: dict[tuple[int, str, int], dict[str, str]]) -> None:
    tmp = RUNS_CSV.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(runs[k] for k in sorted(runs))
    tmp.replace(RUNS_CSV)


def train_one(size: int, model: str, seed: int, out: Path) -> dict[str, str]:
    config, overrides = CANDIDATES[model]
    workdir = run_dir(out, f"{model}-n{size}", seed)
    if workdir.exists() and not (workdir / "bench_run.json").is_file():
        shutil.rmtree(workdir)  # a run killed midway (its budget was spent): start it again
    steps = math.ceil(EPOCHS * size / BATCH)
    overrides = [
        *overrides,
        f"data.train_examples={size}",
        f"data.train_subset_seed={seed}",
        f"max_train_steps={steps}",
    ]
    result = run_candidate(f"{model}-n{size}", config, overrides, seed, MINUTES, out, tta=False)
    return {
        "size": str(size),
        "model": model,
        "seed": str(seed),
        "val_auc": f"{result['final_auc']:.4f}",
        "steps": str(result["steps"]),
        "epochs": f"{result['steps'] * BATCH / size:.1f}",
        "wall_minutes": f"{result['wall_minutes']:.1f}",
        "images_per_second": f"{result['images_per_second']:.0f}",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def summary_rows(runs: dict) -> list[dict]:
    """Per (size, model): AUC per seed, mean, spread (max - min), and the run figures."""
    out = []
    keys = sorted({(k[0], k[1]) for k in runs}, key=lambda k: (k[0], MODELS.index(k[1])))
    for size, model in keys:
        rs = [runs[k] for k in sorted(runs) if k[:2] == (size, model)]
        aucs = [float(r["val_auc"]) for r in rs]
        out.append(
            {
                "size": size,
                "model": model,
                "seeds": [int(r["seed"]) for r in rs],
                "aucs": aucs,
                "mean": statistics.fmean(aucs),
                "spread": max(aucs) - min(aucs),
                "epochs": "/".join(r["epochs"] for r in rs),
                "minutes": "/".join(r["wall_minutes"] for r in rs),
            }
        )
    full = []
    for path, labels in FULL_SOURCES.items():
        if path.is_file():
            with open(path) as f:
                full += [
                    (labels[r["candidate"]], r)
                    for r in csv.DictReader(f)
                    if r["candidate"] in labels
                ]
    for model in dict.fromkeys(m for m, _ in full):
        rs = [r for m, r in full if m == model]
        aucs = [float(r["final_auc"]) for r in rs]
        out.append(
            {
                "size": 20000,
                "model": model,
                "seeds": [int(r["seed"]) for r in rs],
                "aucs": aucs,
                "mean": statistics.fmean(aucs),
                "spread": max(aucs) - min(aucs),
                "epochs": "/".join(f"{int(r['steps']) * BATCH / 20000:.1f}" for r in rs),
                "minutes": "/".join(f"{float(r['wall_minutes']):.1f}" for r in rs),
            }
        )
    return out


def report(runs: dict) -> None:
    rows = summary_rows(runs)
    lines = [
        "| training patches | model | valid AUC per seed (final EMA) | mean | spread | epochs | "
        "wall min |",
        "|---:|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        per_seed = " / ".join(f"{a:.4f}" for a in r["aucs"])
        spread = f"{r['spread']:.4f}" if len(r["aucs"]) > 1 else "-"
        lines.append(
            f"| {r['size']:,} | {r['model']} | {per_seed} | **{r['mean']:.4f}** | "
            f"{spread} | {r['epochs']} | {r['minutes']} |"
        )
    lines += ["", *verdicts(rows)]
    TABLE.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows)


def verdicts(rows: list[dict]) -> list[str]:
    """One line per size where both the plain and a p4 ResNet ran: the difference of the means,
    called a lead only when every seed of one model lies above every seed of the other and
    each has at least 2 seeds (with 3 against 3 that happens by chance once in 10, either way),
    a tie when the seeds overlap, and no verdict with a single seed on either side; then the
    crossover at equal FLOPs: the sizes at which each side leads and those in between."""
    by = {(r["size"], r["model"]): r for r in rows}
    lines: list[str] = []
    at_equal_flops: dict[str, list[int]] = {"p4": [], "tie": [], "plain": [], "one seed": []}
    for size in sorted({r["size"] for r in rows}):
        for other in ("p4resnet-cm", "p4resnet-2x", "effnet-ft96"):
            if (size, "resnet") not in by or (size, other) not in by:
                continue
            plain, group = by[(size, "resnet")], by[(size, other)]
            diff = group["mean"] - plain["mean"]
            spread = max(plain["spread"], group["spread"])
            seeds = f"{len(group['aucs'])} and {len(plain['aucs'])} seeds"
            apart = min(group["aucs"]) > max(plain["aucs"]) or min(plain["aucs"]) > max(
                group["aucs"]
            )
            if min(len(group["aucs"]), len(plain["aucs"])) < 2:
                verdict, key = "no verdict (one seed: its spread is unknown)", "one seed"
            elif not apart:
                verdict, key = "tie", "tie"
            else:
                verdict = f"{other} leads" if diff > 0 else "resnet leads"
                key = "p4" if diff > 0 else "plain"
            if other == "p4resnet-cm":
                at_equal_flops[key].append(size)
            detail = f"{diff:+.4f}; {seeds}"
            if key != "one seed":
                overlap = "apart" if apart else "overlapping"
                detail += f"; larger spread over seeds {spread:.4f}; seeds {overlap}"
            lines.append(
                f"- {size:,} patches: {other} {group['mean']:.4f} against resnet "
                f"{plain['mean']:.4f} ({detail}): {verdict}"
            )
    parts = [
        f"{what} at {_sizes(at_equal_flops[key])}"
        for key, what in (
            ("p4", "the p4 ResNet leads"),
            ("tie", "the two tie"),
            ("one seed", "one seed each (no verdict)"),
            ("plain", "the plain ResNet leads"),
        )
        if at_equal_flops[key]
    ]
    p4, plain = at_equal_flops["p4"], at_equal_flops["plain"]
    if p4 and plain and max(p4) < min(plain):
        where = f"between {max(p4):,} and {min(plain):,} patches"
        lines.append(f"- crossover (equal FLOPs) {where}: {'; '.join(parts)}")
    else:
        lines.append(f"- crossover (equal FLOPs): none measured; {'; '.join(parts)}")
    return lines


def _sizes(sizes: list[int]) -> str:
    return ", ".join(f"{s:,}" for s in sizes)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, model in enumerate(MODELS):
        pts = sorted((r for r in rows if r["model"] == model), key=lambda r: r["size"])
        if not pts:
            continue
        colour = plt.cm.tab10.colors[k]
        for r in pts:
            ax.plot([r["size"]] * len(r["aucs"]), r["aucs"], ".", color=colour, alpha=0.5)
        ax.plot([r["size"] for r in pts], [r["mean"] for r in pts], "o-", color=colour, label=model)
    ax.set(
        xscale="log",
        xlabel="labelled training patches (class-balanced, nested)",
        ylabel="valid AUC (n=3,000; final EMA)",
        title="When do equivariance and pretraining pay?",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)
    print(f"plot -> {PLOT}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=sorted(SEEDS))
    ap.add_argument("--out", type=Path, default=REPO.parent / "bench-runs" / "data_efficiency")
    ap.add_argument("--only", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="train only these of each size's seeds (SEEDS), e.g. one run that fits a session",
    )
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    runs = read_runs()
    if not args.report_only:
        if not (SUBSET / "train").is_dir():
            raise SystemExit(f"the real PCam subset is not at {SUBSET}; set PCAM_SUBSET_ROOT")
        for size, model, seed in grid(args.sizes):
            if model not in args.only or (size, model, seed) in runs:
                continue
            if args.seeds is not None and seed not in args.seeds:
                continue
            runs[(size, model, seed)] = train_one(size, model, seed, args.out)
            write_runs(runs)
            print(f"  -> {RUNS_CSV}", flush=True)
    if not runs:
        raise SystemExit(f"no finished runs in {RUNS_CSV}")
    report(runs)


if __name__ == "__main__":
    main()
