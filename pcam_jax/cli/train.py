"""`pcam-train`: train a config in a workdir, resuming from its latest checkpoint.

    pcam-train --config=configs/quickstart.py --workdir=runs/quickstart [--config.a.b=value ...]

--config is a configs/*.py file, optionally with an argument (configs/cpu_subset.py:resnet).
Exit status: 0 done, 1 error, 75 stopped by SIGTERM/SIGINT after saving a checkpoint (run the
same command again to resume; see pcam_jax/runtime/preemption.py).

Several processes (one per host or per GPU; see launch/README.md) add
--coordinator_address=HOST:PORT --num_processes=N --process_id=I, or run
under srun / on a Cloud TPU VM (see pcam_jax/runtime/distributed.py).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from absl import app, flags, logging

from pcam_jax.cli import common
from pcam_jax.config import check_values, load_config_file
from pcam_jax.errors import Preempted
from pcam_jax.runtime import distributed
from pcam_jax.runtime.logs import quiet_library_logs
from pcam_jax.runtime.preemption import EXIT_PREEMPTED

_CONFIG = flags.DEFINE_string("config", None, "Training config file (configs/*.py[:ARG]).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _CONFIG.value or not common.WORKDIR.value:
        sys.exit("pcam-train: error: --config=configs/NAME.py and --workdir=DIR are required")
    quiet_library_logs()
    try:
        distributed.initialize_from_flags()
        config = load_config_file(_CONFIG.value, *common.config_overrides())
        check_values(config)  # in a second, before the trainer is even imported
        logging.info("config:\n%s", config)
        from pcam_jax.train import train_and_evaluate

        metrics = train_and_evaluate(config, common.WORKDIR.value)
    except Preempted as e:
        # more signals while the interpreter shuts down must not turn status 75 into a kill:
        # ignored handlers survive finalisation (Python resets only its own to the default)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        logging.warning("%s", e)
        print(f"pcam-train: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    if not distributed.is_primary():
        return
    print(
        f"pcam-train: done; validation AUC {metrics.get('auc', float('nan')):.4f}, "
        f"accuracy {metrics.get('accuracy', float('nan')):.4f} ({common.WORKDIR.value})"
    )


def run() -> None:
    """Console-script entry point."""
    common.run_binary(
        main,
        __doc__,
        [__name__, "pcam_jax.runtime.distributed"],
        shared=("workdir",),
        overrides=True,
    )


if __name__ == "__main__":
    run()
