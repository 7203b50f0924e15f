"""Summary of bench/gpu_learning_curve.sh's runs (benchmark helper, not a test).

    python bench/gpu_curve_summary.py RUNS_DIR OUT_DIR     # on the GPU machine, after the runs
    python bench/gpu_curve_summary.py --plot CURVE.csv PNG  # anywhere, from the CSV it wrote

Reads each run's WORKDIR/scalars.jsonl (bench/gpu_train.py's writer), t0 (the launch time),
config.json and train_plan.json, and writes OUT_DIR/gpu_curve.csv (run, step, images_seen,
minutes since launch, val_auc), gpu_runs.json (command, planned and reached steps, median
training images/s) and gpu_logs.txt (the plan and error lines and the end of each log).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def summarise(runs: Path, out: Path) -> None:
    rows: list[list] = []
    meta: dict[str, dict] = {}
    with open(out / "gpu_logs.txt", "w") as logs:
        for d in sorted(p for p in runs.iterdir() if p.is_dir()):
            t0 = float((d / "t0").read_text())
            jsonl = d / "scalars.jsonl"
            scalars = (
                [json.loads(x) for x in jsonl.read_text().splitlines()] if jsonl.is_file() else []
            )
            config = (
                json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
            )
            plan_path = d / "train_plan.json"
            plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
            batch = config.get("batch_size", 64)
            for s in scalars:
                if s["tag"] == "val_auc":
                    minutes = round((s["wall_time"] - t0) / 60, 3)
                    rows.append(
                        [d.name, s["step"], s["step"] * batch, minutes, round(s["value"], 5)]
                    )
            rates = sorted(s["value"] for s in scalars if s["tag"] == "images_per_second")
            meta[d.name] = {
                "command": (d / "args").read_text().strip(),
                "batch_size": batch,
                "planned_steps": plan.get("num_train_steps", config.get("num_train_steps")),
                "last_step": max((s["step"] for s in scalars), default=0),
                "images_per_second_median": rates[len(rates) // 2] if rates else None,
            }
            lines = (d / "train.log").read_text(errors="replace").splitlines()
            keep = [x[:400] for x in lines if "train_minutes=" in x or "rror" in x]
            logs.write(f"==== {d.name}\n" + "\n".join(keep + lines[-4:]) + "\n")
    with open(out / "gpu_curve.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "step", "images_seen", "minutes", "val_auc"])
        writer.writerows(rows)
    (out / "gpu_runs.json").write_text(json.dumps(meta, indent=1))
    for name, m in meta.items():
        last = [r for r in rows if r[0] == name][-1:] or [[name, 0, 0, 0.0, float("nan")]]
        print(
            f"{name:32s} steps {m['last_step']:>5}/{m['planned_steps']}  {last[0][3]:6.2f} min"
            f"  AUC {last[0][4]}  img/s {m['images_per_second_median']}"
        )


def plot(curve_csv: Path, png: Path) -> None:
    """AUC against training steps (the GPU runs share one machine, so steps, not minutes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[tuple[int, float]]] = {}
    with open(curve_csv) as f:
        for r in csv.DictReader(f):
            runs.setdefault(r["run"], []).append((int(r["step"]), float(r["val_auc"])))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, points in sorted(runs.items()):
        steps = [p[0] for p in points]
        aucs = [p[1] for p in points]
        ax.plot(steps, aucs, marker=".", label=name, linestyle="--" if "full" in name else "-")
    ax.set_xlabel("training steps (batch 64)")
    ax.set_ylabel("validation AUC (EMA weights)")
    ax.set_ylim(0.85, 0.96)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(png)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plot"]:
        plot(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        summarise(Path(sys.argv[1]), Path(sys.argv[2]))
