"""The run directory (WORKDIR) of pcam-train: its layout, and every read and write of it.

pcam-train writes a WORKDIR; pcam-eval, pcam-export, pcam-explain and the loaders read it. This
module is the one place that knows where each thing lives and in which format::

    WORKDIR/
      config.json              the run's config, flattened {"a.b": value}   (store/read_config)
      train_plan.json          the step count a train_minutes run chose     (read/write_train_plan)
      distill_targets.npz      a teacher's p(tumour) per training patch     (*_distill_targets)
      checkpoints/STEP/        Orbax composite checkpoints                  (checkpoint_manager)
        model                  {"params", "batch_stats"}: the raw weights
        ema                    the same tree averaged over the updates (ema_decay > 0)
        opt                    {"opt_state", "step"}: what a resumed run needs, nothing else does
        data                   the grain iterator state (the next training batch)
        record                 JSON: step, normalisation statistics, seed, model, validation
      eval/<name>.json         pcam-eval's metrics; <name> is <split> or <split>_tta
      eval/<name>_predictions.csv, _roc.png, _confusion.png, _slides.csv
      .pcam_train.lock.pN      the lock of JAX process N (workdir_lock)
      events.out.tfevents.*    CLU metric writers (TensorBoard)

The checkpoint manager keeps the last ``keep`` checkpoints and the best by validation AUC.
Training (pcam_jax.train.checkpointing) writes them; everything that reads a model restores
only ``model`` or ``ema`` and ``record`` (``restore_model``), so a checkpoint loads without the
optimizer and on any number of devices. One run per workdir: ``workdir_lock`` takes the
process's lock file (``runtime.locks``: flock, which a run killed even by SIGKILL releases) and
a second pcam-train gets TrainingError naming the holder's pid, host and start time. flock is
advisory: pcam-eval, which only reads finished checkpoints (Orbax commits a step by renaming its
folder), does not take it. Imports: config, runtime and errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcam_jax.config import (
    LEGACY_DEFAULTS,
    RUN_NEUTRAL_FIELDS,
    flatten_config,
    unflatten_config,
)
from pcam_jax.errors import InputError, ModelError, TrainingError
from pcam_jax.runtime.distributed import is_primary, make_mesh
from pcam_jax.runtime.files import atomic_path, write_json
from pcam_jax.runtime.locks import lock_holder, try_lock

CONFIG_JSON = "config.json"
TRAIN_PLAN = "train_plan.json"
DISTILL_TARGETS = "distill_targets.npz"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
PREDICTIONS_SUFFIX = "_predictions.csv"
# the items of one checkpoint (see the layout above)
ITEM_MODEL, ITEM_EMA, ITEM_OPT, ITEM_DATA, ITEM_RECORD = "model", "ema", "opt", "data", "record"


def is_workdir(path: str | Path) -> bool:
    """Whether `path` looks like a pcam-train workdir (it holds config.json)."""
    return (Path(path) / CONFIG_JSON).is_file()


# --- config.json -----------------------------------------------------------------------------


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config stored in WORKDIR/config.json."""
    path = Path(workdir) / CONFIG_JSON
    if not path.is_file():
        raise ModelError(f"{path}: not found; is {path.parent} a pcam-train --workdir?")
    return unflatten_config(stored_values(path))


def stored_values(path: Path) -> dict[str, Any]:
    """The flat fields of a config.json, with LEGACY_DEFAULTS for the fields it predates."""
    return {**LEGACY_DEFAULTS, **json.loads(path.read_text())}


def store_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Writes WORKDIR/config.json (process 0 only)."""
    if is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / CONFIG_JSON, flatten_config(config), sort_keys=True)


def check_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Refuses a config that changes the run already checkpointed in WORKDIR.

    Fields in RUN_NEUTRAL_FIELDS may change. A stored config without any
    checkpoint (a run that failed before its first save) does not bind.
    """
    path = workdir / CONFIG_JSON
    if not path.is_file() or not any(checkpoints_dir(workdir).glob("[0-9]*")):
        return
    stored = stored_values(path)
    current = flatten_config(config)
    changed = [
        f"  {k}: {stored.get(k, '<absent>')!r} (stored) -> {current.get(k, '<absent>')!r}"
        for k in sorted(set(stored) | set(current))
        if k not in RUN_NEUTRAL_FIELDS and stored.get(k) != current.get(k)
    ]
    if changed:
        raise TrainingError(
            f"{workdir} holds a run with a different config; these fields change the run:\n"
            + "\n".join(changed)
            + "\nResume with the stored values, or start a new --workdir."
        )


# --- distill_targets.npz ---------------------------------------------------------------------


def read_distill_targets(workdir: Path, key: dict[str, Any]) -> np.ndarray | None:
    """The teacher's p(tumour), float32 (N,), cached in WORKDIR/distill_targets.npz for `key`
    (teacher, views, split, patches), or None when there is none for that key."""
    path = workdir / DISTILL_TARGETS
    if not path.is_file():
        return None
    with np.load(path) as f:
        if json.loads(str(f["key"])) != key:
            return None
        return np.asarray(f["p_tumour"], np.float32)


def write_distill_targets(workdir: Path, p_tumour: np.ndarray, key: dict[str, Any]) -> None:
    """Writes WORKDIR/distill_targets.npz atomically (process 0 only)."""
    if not is_primary():
        return
    with atomic_path(workdir / DISTILL_TARGETS) as tmp, open(tmp, "wb") as f:
        np.savez(f, p_tumour=np.asarray(p_tumour, np.float32), key=json.dumps(key, sort_keys=True))


# --- train_plan.json -------------------------------------------------------------------------


def read_train_plan(workdir: Path) -> dict[str, Any] | None:
    """WORKDIR/train_plan.json (the step count a timed run chose at its start), or None."""
    path = workdir / TRAIN_PLAN
    if not path.is_file():
        return None
    plan = json.loads(path.read_text())
    if not isinstance(plan.get("num_train_steps"), int) or plan["num_train_steps"] < 1:
        raise TrainingError(f"{path}: no valid num_train_steps; delete it to plan again")
    return plan


def write_train_plan(workdir: Path, plan: dict[str, Any]) -> None:
    """Writes WORKDIR/train_plan.json atomically (process 0)."""
    if is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / TRAIN_PLAN, plan, sort_keys=True)


# --- eval/ -----------------------------------------------------------------------------------


def eval_dir(workdir: Path) -> Path:
    """WORKDIR/eval, where pcam-eval writes."""
    return Path(workdir) / EVAL


def eval_name(split: str, tta: bool) -> str:
    """The stem of pcam-eval's outputs for `split`: ``<split>`` or ``<split>_tta``."""
    return f"{split}_tta" if tta else split


def write_eval_result(workdir: Path, name: str, result: dict[str, Any]) -> None:
    """WORKDIR/eval/<name>.json, atomically."""
    write_json(eval_dir(workdir) / f"{name}.json", result)


def eval_results(workdir: Path, step: int) -> dict[str, dict[str, Any]]:
    """pcam-eval's results in WORKDIR/eval/*.json that scored checkpoint `step`, by file stem
    (valid, valid_tta, test, ...): n, auc, auc_ci95, accuracy, nll, weights."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(eval_dir(workdir).glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(result, dict) and result.get("checkpoint_step") == step:
            keep = ("n", "auc", "auc_ci95", "accuracy", "nll", "weights", "tta", "data_root")
            out[path.stem] = {k: result[k] for k in keep if k in result}
    return out


def eval_predictions_context(path: Path) -> tuple[Path, str, int | None]:
    """(workdir, split, checkpoint step) of a pcam-eval WORKDIR/eval/<name>_predictions.csv."""
    workdir = path.resolve().parent.parent
    name = path.name.removesuffix(PREDICTIONS_SUFFIX)
    if path.parent.name != EVAL or name == path.name or not is_workdir(workdir):
        raise InputError(
            f"{path}: has an index column but no path, and is not a pcam-eval output "
            f"(WORKDIR/{EVAL}/<split>{PREDICTIONS_SUFFIX}); give the pcam-predict CSV instead"
        )
    result = path.parent / f"{name}.json"
    step = json.loads(result.read_text()).get("checkpoint_step") if result.is_file() else None
    return workdir, name.removesuffix("_tta"), step


# --- checkpoints/ ----------------------------------------------------------------------------


def checkpoints_dir(workdir: Path) -> Path:
    """WORKDIR/checkpoints."""
    return Path(workdir) / CHECKPOINTS


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
        checkpoints_dir(workdir).absolute(),
        options=options,
        item_handlers={
            ITEM_MODEL: ocp.StandardCheckpointHandler(),
            ITEM_OPT: ocp.StandardCheckpointHandler(),
            ITEM_EMA: ocp.StandardCheckpointHandler(),
            ITEM_DATA: grain.checkpoint.CheckpointHandler(),
            ITEM_RECORD: ocp.JsonCheckpointHandler(),
        },
    )


def checkpoint_has_ema(mngr: ocp.CheckpointManager, step: int) -> bool:
    """Whether checkpoint `step` holds EMA weights (written by a run with ema_decay > 0)."""
    return (Path(mngr.directory) / str(step) / ITEM_EMA).is_dir()


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
    item = ITEM_EMA if weights == "ema" and checkpoint_has_ema(mngr, step) else ITEM_MODEL
    replicated = NamedSharding(make_mesh(), P())
    abstract_model = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_model
    )
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(abstract_model)},
            **{ITEM_RECORD: ocp.args.JsonRestore()},
        ),
    )
    record = dict(restored[ITEM_RECORD])
    record["weights"] = "ema" if item == ITEM_EMA else "raw"
    return restored[item], record


# --- the lock --------------------------------------------------------------------------------


def lock_path(workdir: Path, process_index: int) -> Path:
    """The lock file of JAX process `process_index` in `workdir`."""
    return workdir / f".pcam_train.lock.p{process_index}"


@contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[Path]:
    """Holds this process's exclusive lock on `workdir` for the duration of the block."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = lock_path(workdir, jax.process_index())
    fd = try_lock(path)
    if fd is None:
        raise TrainingError(
            f"{workdir} is in use by another pcam-train ({lock_holder(path)}); wait for it to "
            "finish or stop it, or choose another --workdir"
        )
    try:
        yield path
    finally:
        os.close(fd)  # releases the lock
