"""Benchmark (not a test): validation AUC against wall-clock minutes on the real PCam subset.

    python bench/learning_curve.py --minutes 30 --seeds 0 1 2 --out runs/learning_curve \
        [--candidates resnet p4resnet-cm p4mresnet] [--plot docs/results/learning_curve.png]

Every candidate is trained by ``pcam-train`` (a subprocess, one at a time, so it has the
machine to itself) from the same config (``configs/cpu_subset.py`` unless the candidate says
otherwise) with ``--config.train_minutes=M``: the trainer measures its own speed and sizes the
schedule so that training and its periodic validations end within the budget. The validation
AUC of each periodic evaluation (EMA weights when the recipe keeps them) is read back from the
run's TensorBoard events with its wall-clock time since the process started and the images seen
(step x batch). The floor is a logistic regression (scikit-learn) on colour histograms of the
same training split, scored on the same valid split.

Writes into --out: ``curve.csv`` (candidate, seed, step, images_seen, minutes, val_auc),
``summary.csv`` and ``table.md`` (per candidate: parameters, forward GFLOPs per image from XLA's
cost analysis, training images/s, steps, wall minutes, final AUC per seed and their mean, and
that mean with 8-view D4 test-time augmentation, ``pcam-eval --tta`` run after training,
outside the budget), and
the PNG (AUC against minutes, one line per candidate and seed) at --plot (default
OUT/learning_curve.png). The workdirs stay in OUT/runs/ for pcam-eval.

Finished runs are kept: rerunning with the same --out reads them back (OUT/runs/*/bench_run.json)
and trains only what is missing, so candidates and seeds can be added one invocation at a time;
``--report-only`` trains nothing and tabulates the finished runs among those asked.

A candidate is a name below (CANDIDATES) or LABEL=CONFIG[:FIELD=VALUE,...], for example
``wide=configs/cpu_subset.py:model.widths=(8,16,32,64)``.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pcam_jax.data.subset import subset_root

REPO = Path(__file__).resolve().parents[1]

SUBSET = subset_root()
CPU_SUBSET = "configs/cpu_subset.py"
# the grids of BENCHMARKS.md (learning curves, seed comparison, data efficiency) were begun with
# the augmentation in the loader's workers, before configs/cpu_subset.py moved it to the device;
# every run of these grids keeps it there so that their rows stay comparable
AUGMENT_WHERE = "host"

# label -> (config file, overrides). The three ResNets share the cpu_subset recipe and budget.
# Each label names its widths: "-2x" is twice the plain model's total channels (4x its FLOPs),
# "-cm" the same channels and FLOPs (what configs/cpu_subset.py runs for p4resnet).
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "resnet": (CPU_SUBSET, ["model.name=resnet", "model.widths=(16,32,64,128)"]),
    "resnet-wide": (CPU_SUBSET, ["model.name=resnet", "model.widths=(24,48,96,192)"]),
    "p4resnet-2x": (CPU_SUBSET, ["model.name=p4resnet", "model.widths=(8,16,32,64)"]),
    "p4mresnet": (CPU_SUBSET, ["model.name=p4mresnet", "model.widths=(4,8,16,32)"]),
}
# group models with the plain model's total channels (widths x |G| = 16 ... 128): its FLOPs
CANDIDATES.update(
    {
        "p4resnet-cm": (CPU_SUBSET, ["model.name=p4resnet", "model.widths=(4,8,16,32)"]),
        "p4mresnet-cm": (CPU_SUBSET, ["model.name=p4mresnet", "model.widths=(2,4,8,16)"]),
    }
)
# the same models on the centre 64x64 crop with the global + centre head
CROP = ["model.input_crop=64", "model.head_pool=mean+centre"]
# and with a 4e-3 peak learning rate (the H100 screen of 2026-11-27, BENCHMARKS.md)
LR4 = ["optimizer.learning_rate=4e-3"]
CANDIDATES.update(
    {f"{k}-c64": (c, o + CROP) for k, (c, o) in list(CANDIDATES.items())}
    | {f"{k}-lr4e-3": (c, o + LR4) for k, (c, o) in list(CANDIDATES.items())}
)
# the p4 ResNet without padding, exact under dense slide inference (pcam_jax.models.valid_resnet)
CANDIDATES["p4resnet-valid"] = (f"{CPU_SUBSET}:p4resnet_valid", [])
# and with 1.5x the first three stages' widths: about the padded p4 ResNet's FLOPs per window
CANDIDATES["p4resnet-valid-w6"] = (
    f"{CPU_SUBSET}:p4resnet_valid",
    ["model.widths=(6,12,24,128)"],
)
# distilled from the bundled fine-tuned EfficientNet-Lite0 (pcam_jax.train.distill): the loss is
# 0.3 x the labels' + 0.7 x the cross-entropy against its 8-view p(tumour) on each training patch
CANDIDATES["p4resnet-valid-kd"] = (
    f"{CPU_SUBSET}:p4resnet_valid",
    ["distill.teacher=bundled:effnet-lite0", "distill.weight=0.7"],
)
# the study's systems under the same recipe, CPU-sized (configs/cpu_subset.py's
# STUDY_WIDTH_MULTIPLIER); the validation runs once, at the end, within the budget
STUDY = ("cnn", "p4cnn", "p4mcnn", "allcnn", "p4allcnn", "p4mallcnn")
CANDIDATES.update({k: (f"{CPU_SUBSET}:{k}", ["eval_every_steps=100000"]) for k in STUDY})
# transfer learning from the packaged ImageNet EfficientNet-Lite0 (configs/transfer_*.py): the
# study's frozen backbone + new head, fine-tuning at the native 96 (with the stem and first 5
# blocks frozen, the recipe's default, or none) and upsampled to 160, and the fine-tuned network
# made exactly p4-invariant by pooling its 4 rotated views
CANDIDATES.update(
    {
        "effnet-frozen": ("configs/transfer_frozen.py", []),
        "effnet-ft96": ("configs/transfer_finetune.py", []),
        "effnet-ft96-unfrozen": ("configs/transfer_finetune.py", ["model.frozen_blocks=0"]),
        "effnet-ft160": ("configs/transfer_finetune.py:160", []),
        "effnet-ft96-p4": ("configs/transfer_finetune_d4.py:p4", []),
    }
)


def parse_candidate(spec: str) -> tuple[str, str, list[str]]:
    if spec in CANDIDATES:
        config, overrides = CANDIDATES[spec]
        return spec, config, list(overrides)
    if "=" not in spec:
        raise SystemExit(f"candidate {spec!r}: expected one of {list(CANDIDATES)} or LABEL=CONFIG")
    label, rest = spec.split("=", 1)
    config, _, fields = rest.partition(":")
    return label, config, [f for f in fields.split(",") if f]


def read_scalars(workdir: Path) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, wall_time, value)]} from the TensorBoard event files of a workdir."""
    import tensorflow as tf

    out: dict[str, list[tuple[int, float, float]]] = {}
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.HasField("tensor"):
                    array = tf.make_ndarray(v.tensor)
                    if array.size != 1 or array.dtype.kind not in "fiu":
                        continue  # hyperparameters, text
                    value = float(array.reshape(()))
                else:
                    value = v.simple_value
                out.setdefault(v.tag, []).append((int(event.step), event.wall_time, value))
    return out


def model_figures(config_path: str, overrides: list[str]) -> dict[str, float]:
    """Parameters and forward GFLOPs per 96x96 image of the candidate's model."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from models import flops_per_image, numpy_variables

    from pcam_jax import infer
    from pcam_jax.config import load_config_file

    config = load_config_file(REPO / config_path, *[f"--config.{o}" for o in overrides])
    model = infer.create_model(config).clone(axis_name=None)
    variables = numpy_variables(model, jnp.zeros((1, 96, 96, 3)))
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
    return {"params": params, "gflops": flops_per_image(model, variables, 96) / 1e9}


def run_dir(out: Path, label: str, seed: int) -> Path:
    """The workdir of one candidate and seed under --out."""
    return out / "runs" / f"{label}-s{seed}"


def _term_with_parent() -> None:
    """Runs in the child before exec: the kernel sends it SIGTERM when this benchmark dies, by
    any signal (pcam-train then saves a checkpoint and stops, as when preempted; the workdir
    is left unfinished, without bench_run.json). The launching thread is this script's main
    thread, so the death of the thread is the death of the process (see
    pcam_jax.runtime.children)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def run_candidate(
    label: str,
    config: str,
    overrides: list[str],
    seed: int,
    minutes: float,
    out: Path,
    *,
    tta: bool = True,
) -> dict:
    """Trains one candidate and seed (or reads back its finished run) and summarises it; with
    `tta`, also the 8-view valid AUC (``tta_auc``)."""
    workdir = run_dir(out, label, seed)
    done = workdir / "bench_run.json"
    if done.is_file():  # finished by an earlier invocation: read it back, do not rerun
        meta = json.loads(done.read_text())
        t0, wall = meta["t0"], meta["wall_seconds"]
        print(f"  {label} seed {seed}: reusing the finished run in {workdir}", flush=True)
        return summarise(label, seed, workdir, t0, wall, tta=tta)
    if (workdir / "checkpoints").exists():
        raise SystemExit(f"{workdir} holds an unfinished run; remove it or choose another --out")
    cmd = [
        sys.executable,
        "-m",
        "pcam_jax.cli.train",
        f"--config={REPO / config}",
        f"--workdir={workdir}",
        f"--config.data.root={SUBSET}",
        f"--config.seed={seed}",
        f"--config.train_minutes={minutes}",
        f"--config.augment.where={AUGMENT_WHERE}",
        *[f"--config.{o}" for o in overrides],
    ]
    print("+", " ".join(cmd), flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    # a distilled candidate's teacher targets are the same for every seed: a sibling's cache
    # saves the teacher's pass (pcam-train recomputes it if its key differs)
    siblings = sorted((out / "runs").glob(f"{label}-s*/distill_targets.npz"))
    if siblings:
        shutil.copy2(siblings[0], workdir / siblings[0].name)
    t0 = time.time()
    with open(workdir / "train.log", "w") as log:
        subprocess.run(
            cmd,
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            preexec_fn=_term_with_parent,
        )
    wall = time.time() - t0
    done.write_text(json.dumps({"t0": t0, "wall_seconds": wall, "command": cmd}, indent=2))
    return summarise(label, seed, workdir, t0, wall, tta=tta)


def summarise(
    label: str, seed: int, workdir: Path, t0: float, wall: float, *, tta: bool = True
) -> dict:
    """The curve and figures of a finished run from its events, plan and config."""
    scalars = read_scalars(workdir)
    plan = json.loads((workdir / "train_plan.json").read_text())
    batch = json.loads((workdir / "config.json").read_text())["batch_size"]
    rates = [v for _, _, v in scalars.get("images_per_second", [])][1:]  # first window compiles
    curve = [
        {
            "candidate": label,
            "seed": seed,
            "step": step,
            "images_seen": step * batch,
            "minutes": round((wall_time - t0) / 60, 3),
            "val_auc": round(value, 5),
        }
        for step, wall_time, value in scalars["val_auc"]
    ]
    views = tta_auc(workdir, curve[-1]["step"]) if tta else float("nan")
    print(
        f"  {label} seed {seed}: {wall / 60:.1f} min, AUC {curve[-1]['val_auc']} "
        f"(8-view TTA {views:.4f})",
        flush=True,
    )
    return {
        "curve": curve,
        "wall_minutes": wall / 60,
        "steps": plan["num_train_steps"],
        "images_per_second": sum(rates) / max(len(rates), 1),
        "final_auc": curve[-1]["val_auc"],
        "best_auc": max(c["val_auc"] for c in curve),
        "tta_auc": views,
        "batch": batch,
    }


def tta_auc(workdir: Path, step: int) -> float:
    """Valid AUC of the final checkpoint averaged over the 8 D4 transforms of each patch
    (``pcam-eval --tta``; run once after training, outside its budget, and kept in
    WORKDIR/eval/valid_tta.json). For a p4m model it equals the plain AUC; for p4 it averages
    the mirror images; for the plain model all 8 views."""
    result = workdir / "eval" / "valid_tta.json"
    config = json.loads((workdir / "config.json").read_text())
    if config["model.name"].startswith("p4m"):  # exactly D4-invariant: the 8 views agree
        return float(read_scalars(workdir)["val_auc"][-1][2])
    if not (result.is_file() and json.loads(result.read_text())["checkpoint_step"] == step):
        cmd = [sys.executable, "-m", "pcam_jax.cli.eval", f"--workdir={workdir}"]
        cmd += [f"--checkpoint={step}", "--split=valid", "--tta", "--bootstrap=0"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, preexec_fn=_term_with_parent)
    return float(json.loads(result.read_text())["auc"])


def colour_histogram_floor(bins: int = 16) -> dict[str, float]:
    """Logistic regression on per-channel RGB and HSV histograms (train -> valid AUC)."""
    import numpy as np
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pcam_jax.data import sources

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        src = sources.make_source("folder", SUBSET, split)
        feats, labels = [], []
        for i in range(len(src)):
            rec = src[i]
            rgb = rec["image"]
            hsv = np.asarray(Image.fromarray(rgb).convert("HSV"))
            h = [
                np.histogram(img[..., c], bins=bins, range=(0, 256))[0]
                for img in (rgb, hsv)
                for c in range(3)
            ]
            feats.append(np.concatenate(h) / (96 * 96))
            labels.append(int(rec["label"]))
        return np.asarray(feats), np.asarray(labels)

    t = time.perf_counter()
    xt, yt = features("train")
    xv, yv = features("valid")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(xt, yt)
    auc = float(roc_auc_score(yv, clf.predict_proba(xv)[:, 1]))
    return {"auc": auc, "minutes": (time.perf_counter() - t) / 60, "features": xt.shape[1]}


def plot(curves: list[dict], floor: float, path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = list(dict.fromkeys(c["candidate"] for c in curves))
    colours = dict(zip(labels, plt.cm.tab10.colors, strict=False))
    for label in labels:
        for seed in sorted({c["seed"] for c in curves if c["candidate"] == label}):
            pts = [c for c in curves if c["candidate"] == label and c["seed"] == seed]
            ax.plot(
                [p["minutes"] for p in pts],
                [p["val_auc"] for p in pts],
                "o-",
                ms=3,
                color=colours[label],
                alpha=0.85,
                label=label if seed == min(c["seed"] for c in curves) else None,
            )
    ax.axhline(floor, color="grey", ls="--", label=f"colour-histogram LR ({floor:.3f})")
    ax.axhline(0.95, color="black", ls=":", lw=0.8)
    ax.set(
        xlabel="wall-clock minutes (2-core CPU, training + validation)",
        ylabel="validation AUC (pcam-subset, n=3,000)",
        xlim=(0, max([minutes, *(c["minutes"] for c in curves)]) * 1.02),
        ylim=(max(0.5, floor - 0.05), 1.0),
        title="PCam subset: validation AUC against compute",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--candidates", nargs="+", default=["resnet", "p4resnet-cm", "p4mresnet"])
    ap.add_argument("--out", type=Path, default=Path("runs/learning_curve"))
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--skip-floor", action="store_true")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: tabulate the finished runs among the candidates x seeds asked",
    )
    args = ap.parse_args()
    if not (SUBSET / "train").is_dir():
        raise SystemExit(f"the real PCam subset is not at {SUBSET}; set PCAM_SUBSET_ROOT")
    args.out.mkdir(parents=True, exist_ok=True)
    floor = {"auc": float("nan"), "minutes": float("nan"), "features": 0}
    floor_file = args.out / "floor.json"
    if floor_file.is_file():
        floor = json.loads(floor_file.read_text())
    elif not args.skip_floor:
        floor = colour_histogram_floor()
        floor_file.write_text(json.dumps(floor, indent=2))
    print(f"colour-histogram LR: valid AUC {floor['auc']:.4f}", flush=True)
    curves, rows = [], []
    for spec in args.candidates:
        label, config, overrides = parse_candidate(spec)
        figures = model_figures(config, overrides)
        for seed in args.seeds:
            if (
                args.report_only
                and not (run_dir(args.out, label, seed) / "bench_run.json").is_file()
            ):
                print(f"  {label} seed {seed}: no finished run, left out (--report-only)")
                continue
            result = run_candidate(label, config, overrides, seed, args.minutes, args.out)
            curves += result.pop("curve")
            rows.append({"candidate": label, "seed": seed, **figures, **result})
            write_outputs(args, curves, rows, floor)
    if not rows:
        raise SystemExit(
            f"no finished runs of {args.candidates} x seeds {args.seeds} in {args.out}"
        )
    write_outputs(args, curves, rows, floor)


def write_outputs(args: argparse.Namespace, curves: list, rows: list, floor: dict) -> None:
    with open(args.out / "curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(curves[0]))
        w.writeheader()
        w.writerows(curves)
    with open(args.out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        "| model | params | GFLOPs / image | train images/s | steps x batch (images seen) | "
        "wall min | valid AUC per seed (final, EMA) | mean | mean with 8-view TTA |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for label in dict.fromkeys(r["candidate"] for r in rows):
        rs = [r for r in rows if r["candidate"] == label]
        aucs = [r["final_auc"] for r in rs]
        lines.append(
            f"| {label} | {rs[0]['params']:,} | {rs[0]['gflops']:.3f} | "
            f"{sum(r['images_per_second'] for r in rs) / len(rs):.0f} | "
            f"{'/'.join(str(r['steps']) for r in rs)} x {rs[0]['batch']} "
            f"({'/'.join(format(r['steps'] * r['batch'], ',') for r in rs)}) | "
            f"{'/'.join(format(r['wall_minutes'], '.1f') for r in rs)} | "
            f"{' / '.join(f'{a:.4f}' for a in aucs)} (seeds "
            f"{','.join(str(r['seed']) for r in rs)}) | **{sum(aucs) / len(aucs):.4f}** | "
            f"{sum(r['tta_auc'] for r in rs) / len(rs):.4f} |"
        )
    lines.append(
        f"| colour-histogram logistic regression | {floor['features'] + 1} | - | - | - | "
        f"{floor['minutes']:.1f} | {floor['auc']:.4f} | {floor['auc']:.4f} | - |"
    )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    plot(curves, floor["auc"], args.plot or args.out / "learning_curve.png", args.minutes)
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
