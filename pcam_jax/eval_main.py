"""`pcam-eval`: evaluate a trained workdir on a split (see pcam_jax.evaluate).

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

from absl import app, flags, logging

from pcam_jax import distributed, train
from pcam_jax.binaries import run_binary
from pcam_jax.config_base import config_from_json
from pcam_jax.errors import PcamError
from pcam_jax.evaluate import apply_overrides, evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "A pcam-train workdir.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, last, or a saved step.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "valid", "test"], "Split to evaluate.")
_TTA = flags.DEFINE_bool("tta", False, "Average predictions over the 8 D4 transforms.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of the AUC interval.")
_WEIGHTS = flags.DEFINE_enum(
    "weights",
    "ema",
    ["ema", "raw"],
    "ema: the moving average of the weights when the run kept one (config.ema_decay > 0), "
    "else the raw weights; raw: always the raw weights.",
)


def main(argv: Sequence[str]) -> None:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    rest = [a for a in argv[1:] if not a.startswith("--config.")]
    if rest:
        raise app.UsageError(f"unexpected arguments: {' '.join(rest)}")
    if not _WORKDIR.value:
        sys.exit("pcam-eval: error: --workdir is required (a pcam-train workdir)")
    workdir = Path(_WORKDIR.value)
    train.quiet_library_logs()
    try:
        distributed.initialize_from_flags()
    except distributed.DistributedError as e:
        sys.exit(f"pcam-eval: error: {e}")
    try:
        if not workdir.is_dir():
            raise PcamError(f"--workdir={workdir}: directory not found")
        config = config_from_json(workdir / "config.json")
        apply_overrides(config, overrides)
        result = evaluate(
            config,
            workdir,
            checkpoint=_CHECKPOINT.value,
            split=_SPLIT.value,
            tta=_TTA.value,
            n_bootstrap=_BOOTSTRAP.value,
            weights=_WEIGHTS.value,
        )
    except PcamError as e:
        logging.error("%s", e)
        sys.exit(f"pcam-eval: error: {e}")
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
    """Console-script entry point: `--config.*` overrides are kept out of absl's parser."""
    argv = sys.argv
    passthrough = [a for a in argv[1:] if a.startswith("--config.")]
    absl_argv = [argv[0], *[a for a in argv[1:] if not a.startswith("--config.")]]
    run_binary(
        lambda remaining: main([remaining[0], *remaining[1:], *passthrough]),
        __doc__,
        [__name__, "pcam_jax.distributed"],
        argv=absl_argv,
    )


if __name__ == "__main__":
    run()
