"""Checkpoints of a training workdir: WORKDIR/checkpoints/STEP/, written by Orbax.

Layout of one checkpoint (items of an Orbax composite checkpoint)::

    model    {"params", "batch_stats"}: the raw weights           (StandardCheckpointHandler)
    ema      the same tree averaged over the updates, when the run kept an EMA (ema_decay > 0)
    opt      {"opt_state", "step"}: what a resumed run needs, and nothing else does
    data     the grain iterator state (the next training batch)
    record   JSON: step, normalisation statistics, seed, model fields, validation metrics

The manager keeps the last ``keep`` checkpoints and the best by validation AUC. Training
(pcam_jax.train) writes them; everything that reads a model (pcam_jax.inference: pcam-eval,
pcam-predict, pcam-slide, pcam-export) restores only ``model`` or ``ema`` and ``record``, so a
checkpoint loads without the optimizer and on any number of devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcam_jax.distributed import make_mesh
from pcam_jax.errors import ModelError


def checkpoint_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    """Keeps the last `keep` checkpoints and the best by validation AUC."""
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m["val_auc"], n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        best_fn=lambda m: m["val_auc"],
        best_mode="max",
        preservation_policy=policy,
        enable_async_checkpointing=False,
        create=True,
    )
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=options,
        item_handlers={
            "model": ocp.StandardCheckpointHandler(),
            "opt": ocp.StandardCheckpointHandler(),
            "ema": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
            "record": ocp.JsonCheckpointHandler(),
        },
    )


def checkpoint_has_ema(mngr: ocp.CheckpointManager, step: int) -> bool:
    """Whether checkpoint `step` holds EMA weights (written by a run with ema_decay > 0)."""
    return (Path(mngr.directory) / str(step) / "ema").is_dir()


def resolve_checkpoint(mngr: ocp.CheckpointManager, which: str) -> int:
    """'best' | 'last' | a step number -> a saved step."""
    steps = list(mngr.all_steps())
    if not steps:
        raise ModelError(f"{mngr.directory}: no checkpoints; train first with pcam-train")
    if which == "last":
        return max(steps)
    if which == "best":
        best = mngr.best_step()
        return best if best is not None else max(steps)
    if not which.isdigit() or int(which) not in steps:
        raise ModelError(
            f"--checkpoint={which!r}: expected best, last or one of the saved steps {sorted(steps)}"
        )
    return int(which)


WEIGHTS = ("ema", "raw")


def restore_model(
    mngr: ocp.CheckpointManager, step: int, abstract_model: Any, weights: str = "ema"
) -> tuple[Any, dict[str, Any]]:
    """The model variables and the JSON record of checkpoint `step` (no optimizer state).

    weights: "ema" gives the EMA variables when the checkpoint holds them and the raw ones
    otherwise; "raw" always gives the raw ones. ``record["weights"]`` says which came back.
    The variables are restored replicated over this process's mesh, whatever
    the devices that saved them.
    """
    if weights not in WEIGHTS:
        raise ModelError(f"weights={weights!r}: expected one of {WEIGHTS}")
    item = "ema" if weights == "ema" and checkpoint_has_ema(mngr, step) else "model"
    replicated = NamedSharding(make_mesh(), P())
    abstract_model = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_model
    )
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(abstract_model)}, record=ocp.args.JsonRestore()
        ),
    )
    record = dict(restored["record"])
    record["weights"] = "ema" if item == "ema" else "raw"
    return restored[item], record
