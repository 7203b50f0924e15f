"""`pcam-train`: train a config in a workdir, resuming from its latest checkpoint.

pcam-train --config=configs/quickstart.py --workdir=runs/quickstart [--config.a.b=value ...]

Exit status: 0 done, 1 error, 75 stopped by SIGTERM/SIGINT after saving a checkpoint (run the
same command again to resume; see pcam_jax/preemption.py).

Several processes (one per host or per GPU; see launch/README.md) add
--coordinator_address=HOST:PORT --num_processes=N --process_id=I, or run
under srun / on a Cloud TPU VM (see pcam_jax/distributed.py).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from pcam_jax import distributed
from pcam_jax.binaries import run_binary
from pcam_jax.errors import PcamError
from pcam_jax.preemption import EXIT_PREEMPTED, Preempted

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from pcam_jax import train

    train.quiet_library_logs()
    try:
        distributed.initialize_from_flags()
    except distributed.DistributedError as e:
        sys.exit(f"pcam-train: error: {e}")
    logging.info("config:\n%s", _CONFIG.value)
    try:
        metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Preempted as e:
        # more signals while the interpreter shuts down must not turn status 75 into a kill:
        # ignored handlers survive finalisation (Python resets only its own to the default)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        logging.warning("%s", e)
        print(f"pcam-train: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except PcamError as e:
        logging.error("%s", e)
        sys.exit(f"pcam-train: error: {e}")
    if not distributed.is_primary():
        return
    print(
        f"pcam-train: done; validation AUC {metrics.get('auc', float('nan')):.4f}, "
        f"accuracy {metrics.get('accuracy', float('nan')):.4f} ({_WORKDIR.value})"
    )


def run() -> None:
    """Console-script entry point."""
    run_binary(main, __doc__, [__name__, "pcam_jax.distributed"])


if __name__ == "__main__":
    run()
