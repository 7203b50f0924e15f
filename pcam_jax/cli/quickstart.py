"""`pcam-quickstart`: the README's main job: synthetic PCam -> verify -> train -> evaluate.

    python -m pcam_jax.cli.quickstart --workdir=runs/quickstart [--seed=0]

Writes the synthetic dataset (exact PCam HDF5 format) to WORKDIR/data unless it is already
there, verifies it and prints its statistics (figures in WORKDIR/stats), trains
configs/quickstart.py (a small p4m CNN, about a minute on 2 CPU cores) in WORKDIR/train,
evaluates the best checkpoint on the test split (WORKDIR/train/eval/) and prints the test AUC.
Rerunning resumes or reuses what is there. Run it from a clone of the repository.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app

from pcam_jax.cli import common
from pcam_jax.quickstart import run_quickstart


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run_quickstart(common.WORKDIR.value or "runs/quickstart", common.SEED.value)


def run() -> None:
    """Console-script entry point."""
    common.run_binary(main, __doc__, [__name__], shared=("workdir", "seed"))


if __name__ == "__main__":
    run()
