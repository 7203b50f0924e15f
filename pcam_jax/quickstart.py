"""The README's main job: synthetic PCam -> verify -> statistics.

    python -m pcam_jax.quickstart --workdir=runs/quickstart

Writes the synthetic dataset (exact PCam HDF5 format) to WORKDIR/data unless it
is already there, verifies it, computes the normalisation statistics of its
training split, and prints the data statistics (figures in WORKDIR/stats).
Training and evaluation on it join this job with the training binary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from pcam_jax.data import pipeline, sources, stats, synth, verify
from pcam_jax.data.pcam_format import SPLITS, DataError

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Directory for data and outputs.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic dataset.")


def run_quickstart(workdir: str | Path, seed: int = 0) -> int:
    """Runs the main job in `workdir`; returns the exit code."""
    workdir = Path(workdir)
    data = workdir / "data"
    if all(p.is_file() for s in SPLITS for p in sources.split_paths(data, s)):
        print(f"[1/4] synthetic PCam already in {data}")
    else:
        t0 = time.perf_counter()
        synth.write_synthetic_pcam(data, seed=seed)
        print(f"[1/4] wrote synthetic PCam to {data} in {time.perf_counter() - t0:.1f} s")
    report = verify.verify_root(data)
    print(f"[2/4] pcam-data verify --root={data}\n{report.format()}")
    if not report.ok:
        return 1
    norm = pipeline.dataset_norm_stats(sources.make_source("pcam_hdf5", data, "train"))
    mean = ", ".join(f"{v:.1f}" for v in norm.mean)
    std = ", ".join(f"{v:.1f}" for v in norm.std)
    print(f"[3/4] train normalisation: mean ({mean}), std ({std}) over {norm.n} patches")
    result = stats.compute_stats(data)
    print(f"[4/4] pcam-data stats --root={data}\n{stats.format_table(result)}")
    for path in stats.write_figures(data, result, workdir / "stats", seed=seed):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        sys.exit(run_quickstart(_WORKDIR.value, _SEED.value))
    except DataError as e:
        sys.exit(f"quickstart: error: {e}")


if __name__ == "__main__":
    app.run(main)
