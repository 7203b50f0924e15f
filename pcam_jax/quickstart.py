"""The README's main job: synthetic PCam -> verify -> train -> evaluate.

    python -m pcam_jax.cli.quickstart --workdir=runs/quickstart

Writes the synthetic dataset (exact PCam HDF5 format) to WORKDIR/data unless it
is already there, verifies it and prints its statistics (figures in
WORKDIR/stats), trains the `quickstart` config (a small p4m CNN, about a
minute on 2 CPU cores) in WORKDIR/train, evaluates the best checkpoint on the
test split (WORKDIR/train/eval/test.json, predictions, ROC curve) and prints
the test AUC. Rerunning resumes or reuses what is there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pcam_jax.config import load_config_file
from pcam_jax.data import stats, synth, verify
from pcam_jax.data.pcam_format import SPLITS, split_paths
from pcam_jax.errors import DataError, TrainingError
from pcam_jax.runtime.logs import quiet_library_logs

#: The recipes of the repository (configs/*.py), beside the package in a clone.
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def quickstart_config_path() -> Path:
    """configs/quickstart.py of the clone this package runs from (or of the current folder)."""
    for folder in (CONFIGS_DIR, Path.cwd() / "configs"):
        if (folder / "quickstart.py").is_file():
            return folder / "quickstart.py"
    raise TrainingError(
        f"configs/quickstart.py not found in {CONFIGS_DIR.parent} or {Path.cwd()}; run the "
        "quickstart from a clone of the pcam_jax repository"
    )


def run_quickstart(workdir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Runs the main job in `workdir`; returns the test metrics (raises on failure)."""
    from pcam_jax.infer.evaluate import evaluate
    from pcam_jax.train import train_and_evaluate

    quiet_library_logs()
    workdir = Path(workdir)
    data = workdir / "data"
    if all(p.is_file() for s in SPLITS for p in split_paths(data, s)):
        print(f"[1/5] synthetic PCam already in {data}")
    else:
        t0 = time.perf_counter()
        synth.write_synthetic_pcam(data, seed=seed)
        print(f"[1/5] wrote synthetic PCam to {data} in {time.perf_counter() - t0:.1f} s")
    report = verify.verify_root(data)
    print(f"[2/5] pcam-data verify: {report.format().splitlines()[-1]}")
    if not report.ok:
        print(report.format())
        raise DataError(f"{data}: verification failed (report above)")
    data_stats = stats.compute_stats(data)
    print(f"[3/5] pcam-data stats\n{stats.format_table(data_stats)}")
    stats.write_figures(data, data_stats, workdir / "stats", seed=seed)
    config = load_config_file(
        quickstart_config_path(), f"--config.data.root={data}", f"--config.seed={seed}"
    )
    print(
        f"[4/5] pcam-train --config=configs/quickstart.py --workdir={workdir / 'train'} "
        f"({config.model.name}, {config.num_train_steps} steps of {config.batch_size})"
    )
    t0 = time.perf_counter()
    val = train_and_evaluate(config, workdir / "train")
    print(f"      done in {time.perf_counter() - t0:.0f} s; validation AUC {val['auc']:.4f}")
    result = evaluate(config, workdir / "train", checkpoint="best", split="test")
    lo, hi = result["auc_ci95"]
    print(
        f"[5/5] pcam-eval --workdir={workdir / 'train'} --split=test\n"
        f"test AUC {result['auc']:.4f} (95% CI {lo:.4f}-{hi:.4f}), accuracy "
        f"{result['accuracy']:.4f}, n={result['n']}, checkpoint {result['checkpoint_step']}; "
        f"outputs in {workdir / 'train' / 'eval'}"
    )
    return result
