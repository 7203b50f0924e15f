"""`pcam-eval`: evaluate a trained workdir on a split (see pcam_jax.infer.evaluate).

    pcam-eval --workdir=DIR [--checkpoint=best|last|STEP] [--split=test] [--tta]
              [--weights=ema|raw] [--config.data.root=...]

With a run that kept an EMA of its weights (config.ema_decay > 0), the EMA
weights are evaluated unless --weights=raw.

Several processes: the flags of pcam-train (--coordinator_address,
--num_processes, --process_id, --distributed); each process reads a share of
the split, process 0 writes the files.

`--config.FIELD=VALUE` overrides fields of the config stored in DIR (typed
like the stored field); an unknown field is an error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from pcam_jax.cli import common
from pcam_jax.config import apply_overrides
from pcam_jax.errors import PcamError
from pcam_jax.infer.evaluate import evaluate
from pcam_jax.runtime import distributed
from pcam_jax.runtime.logs import quiet_library_logs
from pcam_jax.workdir import read_config

_SPLIT = flags.DEFINE_enum("split", "test", ["train", "valid", "test"], "Split to evaluate.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not common.WORKDIR.value:
        sys.exit("pcam-eval: error: --workdir is required (a pcam-train workdir)")
    workdir = Path(common.WORKDIR.value)
    quiet_library_logs()
    distributed.initialize_from_flags()
    if not workdir.is_dir():
        raise PcamError(f"--workdir={workdir}: directory not found")
    config = apply_overrides(read_config(workdir), common.config_overrides())
    result = evaluate(
        config,
        workdir,
        checkpoint=common.CHECKPOINT.value,
        split=_SPLIT.value,
        tta=common.TTA.value,
        n_bootstrap=common.BOOTSTRAP.value,
        weights=common.WEIGHTS.value,
    )
    if not distributed.is_primary():
        return
    ci = result.get("auc_ci95", [float("nan")] * 2)
    print(
        f"pcam-eval: {result['split']}{' (tta)' if result['tta'] else ''} n={result['n']} "
        f"AUC {result['auc']:.4f} (95% CI {ci[0]:.4f}-{ci[1]:.4f}) accuracy "
        f"{result['accuracy']:.4f} nll {result['nll']:.4f} "
        f"[checkpoint {result['checkpoint_step']}, {result['weights']} weights] -> "
        f"{workdir / 'eval'}"
    )


def run() -> None:
    """Console-script entry point."""
    common.run_binary(
        main,
        __doc__,
        [__name__, "pcam_jax.runtime.distributed"],
        shared=("workdir", "checkpoint", "tta", "weights", "bootstrap"),
        overrides=True,
    )


if __name__ == "__main__":
    run()
