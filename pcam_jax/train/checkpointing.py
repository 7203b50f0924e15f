"""Training checkpoints: what a checkpoint of a run holds, writing one, and resuming from one.

The layout of WORKDIR/checkpoints/ and the manager (keep the last K and the best by validation
AUC) belong to ``pcam_jax.workdir``; this module fills the items: ``model`` (the raw
variables), ``opt`` (optimizer state and step), ``ema`` (when kept), ``data`` (the grain
iterator, so a resumed run continues on exactly the next batch) and ``record`` (JSON: step,
normalisation statistics, seed, model fields, layout, validation metrics). Saves are
synchronous: when ``save_checkpoint`` returns, the step is committed on disk. A run resumed on
another layout (processes, grain workers) rebuilds its iterator from the step, since the global
batches do not depend on the layout. Imports: workdir, data.pipeline, train.step, errors.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from pcam_jax.data import pipeline
from pcam_jax.errors import TrainingError
from pcam_jax.train.step import TrainState, raw_variables
from pcam_jax.workdir import ITEM_DATA, ITEM_EMA, ITEM_MODEL, ITEM_OPT, ITEM_RECORD


def checkpoint_items(state: TrainState) -> dict[str, Any]:
    """The pytree items of a checkpoint: "model" (the raw variables), "opt" (to resume) and,
    with EMA on, "ema" (the averaged variables, same structure as "model")."""
    items = {
        ITEM_MODEL: raw_variables(state),
        ITEM_OPT: {"opt_state": state.opt_state, "step": state.step},
    }
    if state.ema is not None:
        items[ITEM_EMA] = state.ema
    return items


def restore_for_training(
    mngr: ocp.CheckpointManager,
    step: int,
    state: TrainState,
    train_iter: Any,
    loader: grain.DataLoader,
    layout: dict[str, int],
    norm: pipeline.NormStats,
    data_root: str,
) -> TrainState:
    """`state` and `train_iter` as saved at checkpoint `step`, onto `state`'s shardings.

    The data iterator comes from the checkpoint when the run's layout (number
    of processes and grain workers) is the one that wrote it; on another
    layout it is rebuilt from the step, since the global batches do not
    depend on the layout (`pipeline.GlobalBatchSampler`).
    """
    restored_record = mngr.restore(
        step, args=ocp.args.Composite(**{ITEM_RECORD: ocp.args.JsonRestore()})
    )
    record = restored_record[ITEM_RECORD]
    saved = pipeline.NormStats.from_json(record["norm"])
    if not (
        np.allclose(saved.mean, norm.mean, rtol=1e-6)
        and np.allclose(saved.std, norm.std, rtol=1e-6)
        and saved.n == norm.n
    ):
        raise TrainingError(
            f"the training data under {data_root} changed since checkpoint {step} "
            "(normalisation statistics differ); start a new --workdir"
        )
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        checkpoint_items(state),
    )
    items: dict[str, Any] = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    same_layout = record.get("layout", layout) == layout
    if same_layout:
        items[ITEM_DATA] = grain.checkpoint.CheckpointRestore(train_iter)
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    if not same_layout:
        train_iter.set_state(pipeline.train_iterator_state(loader, step))
        logging.info(
            "checkpoint %d was written by %s; continuing the same global batches on %s",
            step,
            record["layout"],
            layout,
        )
    return state.replace(
        params=restored[ITEM_MODEL]["params"],
        batch_stats=restored[ITEM_MODEL]["batch_stats"],
        opt_state=restored[ITEM_OPT]["opt_state"],
        step=restored[ITEM_OPT]["step"],
        ema=restored.get(ITEM_EMA),
    )


def save_checkpoint(
    mngr: ocp.CheckpointManager,
    step: int,
    state: TrainState,
    train_iter: Any,
    record: dict[str, Any],
    val_auc: float | None,
) -> None:
    """Writes checkpoint `step` (every item; `val_auc` ranks it for "best" when given) and waits
    until it is committed."""
    mngr.save(
        step,
        args=ocp.args.Composite(
            **{k: ocp.args.StandardSave(v) for k, v in checkpoint_items(state).items()},
            **{
                ITEM_DATA: grain.checkpoint.CheckpointSave(train_iter),
                ITEM_RECORD: ocp.args.JsonSave(record),
            },
        ),
        metrics={"val_auc": val_auc} if val_auc is not None else None,
        force=True,
    )
    mngr.wait_until_finished()
