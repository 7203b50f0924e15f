"""Training: `train_and_evaluate(config, workdir)`.

The train step is a per-device SPMD function (pmap semantics) written with
`jax.shard_map` over a 1-D mesh of every device, axis ``data``: the batch is
split across devices, parameters and optimizer state are replicated, the
gradient and the BatchNorm statistics are averaged over ``data``, and the whole
step is jit-compiled. It is a pure function of (state, batch, rng).

Checkpoints (Orbax; layout in pcam_jax.checkpoints) hold the model variables,
the optimizer state and step, the exponential moving average of the variables
when ``ema_decay > 0`` (item ``ema``), the grain iterator state and a JSON
record (normalisation statistics, seed, validation metrics); the run resumes
from the latest one in WORKDIR. One run per workdir (pcam_jax.workdir_lock);
SIGTERM/SIGINT save a checkpoint and stop (pcam_jax.preemption). Validation
uses the prediction path every binary shares (pcam_jax.inference); this module
holds only training.
With EMA on, the periodic validation (and so the best checkpoint) uses the
EMA weights, and so does pcam-eval unless asked for the raw ones. Metrics
go through CLU metric writers (TensorBoard event files and the console).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, metrics, periodic_actions
from flax.training import train_state
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcam_jax import models
from pcam_jax.checkpoints import checkpoint_manager
from pcam_jax.config_base import RUN_NEUTRAL_FIELDS, flatten_config
from pcam_jax.data import pipeline, sources
from pcam_jax.data.fileio import atomic_path
from pcam_jax.distributed import AXIS, is_primary, make_mesh, to_global
from pcam_jax.errors import TrainingError
from pcam_jax.inference import (
    Preprocess,
    cast_floats,
    create_model,
    make_eval_loader,
    make_predict_fn,
    make_preprocess,
    pad_to_local_devices,
    predict,
    split_outputs,
)
from pcam_jax.metrics import binary_metrics
from pcam_jax.optim import length_free_before_hold, make_optimizer, make_schedule
from pcam_jax.preemption import Preempted, preemption_watcher
from pcam_jax.workdir_lock import workdir_lock
from pcam_jax.xla_options import compiler_options


def quiet_library_logs() -> None:
    """Drops Orbax's INFO lines (tens per checkpoint) from the absl log; warnings stay."""
    import logging as std_logging

    class _DropOrbaxInfo(std_logging.Filter):
        def filter(self, record: std_logging.LogRecord) -> bool:
            return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname

    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
        handler.addFilter(_DropOrbaxInfo())


class TrainState(train_state.TrainState):
    """Flax TrainState plus the BatchNorm statistics and the EMA of both (or None)."""

    batch_stats: Any = None
    ema: Any = None  # {"params", "batch_stats"} averaged over the updates, when ema_decay > 0


def ema_decay_at(decay: float, updates: jax.Array) -> jax.Array:
    """The EMA decay used at update ``updates`` (0-based): min(decay, (1 + t) / (10 + t)).

    The warm-up (TensorFlow's ExponentialMovingAverage with num_updates) keeps the average
    from being dominated by the random initialisation in short runs.
    """
    t = jnp.asarray(updates, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def update_ema(ema: Any, variables: Any, decay: jax.Array) -> Any:
    """ema * decay + variables * (1 - decay), leaf by leaf (same tree structure)."""
    return jax.tree_util.tree_map(lambda e, v: decay * e + (1.0 - decay) * v, ema, variables)


def raw_variables(state: TrainState) -> dict[str, Any]:
    """The model variables being trained: {"params", "batch_stats"}."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def eval_variables(state: TrainState) -> dict[str, Any]:
    """The variables validation uses: the EMA when it is kept, else the raw ones."""
    return state.ema if state.ema is not None else raw_variables(state)


# Averages of the per-step training loss and accuracy (a CLU metrics collection).
TrainMetrics = metrics.Collection.create(
    loss=metrics.Average.from_output("loss"), accuracy=metrics.Average.from_output("accuracy")
)


# --- config --------------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Refuses a config that changes the run already checkpointed in WORKDIR.

    Fields in RUN_NEUTRAL_FIELDS may change. A stored config without any
    checkpoint (a run that failed before its first save) does not bind.
    """
    path = workdir / "config.json"
    if not path.is_file() or not any((workdir / "checkpoints").glob("[0-9]*")):
        return
    stored = json.loads(path.read_text())
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


def store_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Writes WORKDIR/config.json (process 0 only)."""
    if is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
        with atomic_path(workdir / "config.json") as tmp:
            tmp.write_text(json.dumps(flatten_config(config), indent=2, sort_keys=True))


def initial_variables(
    config: ml_collections.ConfigDict, model: nn.Module, key: jax.Array
) -> dict[str, Any]:
    """model.init (`models.init_variables`), then config.init_from's pretrained weights."""
    size = models.input_size(config.model.name)
    variables = models.init_variables(model, key, (2, size, size, 3))
    if config.init_from:
        if config.model.name != "inception_v3":
            raise TrainingError(
                f"config.init_from is set but model {config.model.name!r} has no pretrained "
                "weights loader (only inception_v3 reads torchvision state dicts)"
            )
        from pcam_jax.models import torch_convert

        path = Path(config.init_from)
        if not path.is_file():
            raise TrainingError(
                f"config.init_from={str(path)!r}: file not found; download torchvision's "
                "inception_v3_google-*.pth elsewhere and copy it here"
            )
        variables = torch_convert.load_pretrained(variables, path)
    return dict(variables)


def trainable_mask(model: nn.Module, params: Any) -> Any:
    """None (train everything), or the heads-only mask of a frozen Inception backbone."""
    if getattr(model, "freeze_backbone", False):
        from pcam_jax.models.inception import trainable_mask as heads_only

        return heads_only(params)
    return None


# --- data ----------------------------------------------------------------------------------


def make_source(config: ml_collections.ConfigDict, split: str) -> sources.PatchSource:
    """The `split` of the configured data source."""
    return sources.make_source(
        config.data.source,
        config.data.root,
        split,
        kaggle_valid_fraction=config.data.kaggle_valid_fraction,
        kaggle_split_seed=config.data.kaggle_split_seed,
    )


def norm_stats(config: ml_collections.ConfigDict, train_source: Any) -> pipeline.NormStats:
    """Training-split statistics, or ImageNet's (config.data.normalization)."""
    if config.data.normalization == "imagenet":
        return pipeline.IMAGENET_STATS
    if config.data.normalization != "dataset":
        raise TrainingError(
            f"config.data.normalization={config.data.normalization!r}: expected dataset or imagenet"
        )
    if jax.process_count() > 1:
        # process 0 streams the split and caches the result beside the data; the others
        # then read that cache (or, when they cannot see it, compute the same numbers)
        if is_primary():
            pipeline.dataset_norm_stats(train_source)
        multihost_utils.sync_global_devices("pcam_jax norm stats")
    return pipeline.dataset_norm_stats(train_source)


def global_batch(mesh: jax.sharding.Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A training batch (this process's share) as the step's global image and label arrays."""
    return {"image": to_global(mesh, batch["image"]), "label": to_global(mesh, batch["label"])}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every array of `tree` (the same on every process) replicated over `mesh`."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x: Any) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


# --- steps ---------------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of integer labels (B,) against logits (B, K).

    With ``smoothing`` s > 0 the targets are (1 - s) one-hot + s / K (label smoothing).
    """
    logits = logits.astype(jnp.float32)
    if smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    preprocess: Preprocess,
    aux_loss_weight: float,
    schedule: optax.Schedule,
    label_smoothing: float = 0.0,
    ema_decay: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on this device's share of the batch; call inside shard_map over 'data'.

    rng is the run's base key: the step's dropout key is derived from it, the
    step number and the device index, so the step is a pure function. With
    ema_decay > 0 the EMA of the updated parameters and BatchNorm statistics is
    advanced too (``ema_decay_at``).
    """
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    images = preprocess(batch["image"])
    labels = batch["label"]
    kwargs = {"return_aux": True} if aux_loss_weight > 0 else {}

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        variables = {
            "params": cast_floats(params, preprocess.dtype),
            "batch_stats": state.batch_stats,
        }
        out, mutated = state.apply_fn(
            variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng}, **kwargs
        )
        logits, aux = split_outputs(out)
        loss = cross_entropy(logits, labels, label_smoothing)
        if aux is not None:
            loss = loss + aux_loss_weight * cross_entropy(aux, labels, label_smoothing)
        return loss, (logits, mutated.get("batch_stats", state.batch_stats))

    # Per-device copies of the parameters (pmap semantics): the gradient is this device's,
    # and the pmean below averages it. Differentiating the replicated parameters directly
    # would make shard_map's transpose sum the devices' gradients already, and the pmean
    # would then count them D times.
    params = jax.lax.pcast(state.params, AXIS, to="varying")
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = jax.lax.pmean(grads, AXIS)
    batch_stats = jax.lax.pmean(batch_stats, AXIS)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_decay > 0:
        decay = ema_decay_at(ema_decay, state.step)
        new_state = new_state.replace(ema=update_ema(state.ema, raw_variables(new_state), decay))
    finite = [jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(new_state.params)]
    step_metrics = {
        "loss": jax.lax.pmean(loss, AXIS),
        "accuracy": jax.lax.pmean(accuracy, AXIS),
        "learning_rate": schedule(state.step),
        "params_finite": jnp.all(jnp.stack(finite)),
    }
    return new_state, step_metrics


# --- checkpoints ---------------------------------------------------------------------------


def _checkpoint_items(state: TrainState) -> dict[str, Any]:
    """The pytree items of a checkpoint: "model" (the raw variables), "opt" (to resume) and,
    with EMA on, "ema" (the averaged variables, same structure as "model")."""
    items = {
        "model": raw_variables(state),
        "opt": {"opt_state": state.opt_state, "step": state.step},
    }
    if state.ema is not None:
        items["ema"] = state.ema
    return items


def _restore_for_training(
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
    record = mngr.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
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
        _checkpoint_items(state),
    )
    items: dict[str, Any] = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    same_layout = record.get("layout", layout) == layout
    if same_layout:
        items["data"] = grain.checkpoint.CheckpointRestore(train_iter)
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
        params=restored["model"]["params"],
        batch_stats=restored["model"]["batch_stats"],
        opt_state=restored["opt"]["opt_state"],
        step=restored["opt"]["step"],
        ema=restored.get("ema"),
    )


# --- time budget (config.train_minutes) ----------------------------------------------------

TRAIN_PLAN = "train_plan.json"


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
        with atomic_path(workdir / TRAIN_PLAN) as tmp:
            tmp.write_text(json.dumps(plan, indent=2, sort_keys=True))


def steps_for_budget(
    seconds: float,
    step_seconds: float,
    eval_seconds: float,
    eval_every: int,
    checkpoint_seconds: float,
    checkpoint_every: int,
) -> int:
    """The most steps S whose training, ceil(S / eval_every) validations and
    ceil(S / checkpoint_every) checkpoints fit in `seconds` (at least 1)."""
    per_step = step_seconds + eval_seconds / eval_every + checkpoint_seconds / checkpoint_every
    steps = max(1, int(seconds / per_step))
    while steps > 1 and (
        steps * step_seconds
        + math.ceil(steps / eval_every) * eval_seconds
        + math.ceil(steps / checkpoint_every) * checkpoint_seconds
        > seconds
    ):
        steps -= 1
    return steps


PROBE_STEPS = 25  # timed training steps of the speed probe (after one compiling step)
CHECKPOINT_SECONDS = 2.0  # allowance per checkpoint save in the budget
# Share of the time left after the probe that the provisional plan fills: a 25-step probe's
# rate was off by -12% to +15% from a whole 28-minute run's on the 2-core machine.
BUDGET_FILL = 0.88
# The re-plan: at step REPLAN_STEPS (at most a quarter of the provisional plan) the run measures
# its own rate from step REPLAN_FROM on, validations and checkpoints excluded, and fixes its
# length to fill REPLAN_FILL of the time left. Until then the learning rate is held at its peak
# after the warm-up (make_schedule's hold_steps), so the schedule before it is the same
# whatever length is chosen.
REPLAN_STEPS = 500
REPLAN_FROM = 25
REPLAN_FILL = 0.97
# The late check: at LATE_CHECK_AT of the way from the re-plan to the planned end, a run that
# re-planned in the same process measures its rate again (since the re-plan, validations and
# checkpoints included) and, if the rest would not fit in REPLAN_FILL of what is left of the
# budget (the machine slowed down), shortens its schedule so that it does. It never lengthens
# it: train_minutes is a ceiling. The cosine then decays over the shorter rest, a small drop
# in the learning rate, with no jump upwards.
LATE_CHECK_AT = 0.75


def _steps_within(
    config: ml_collections.ConfigDict, seconds: float, step_seconds: float, eval_seconds: float
) -> int:
    """``steps_for_budget`` with the config's validation and checkpoint cadence."""
    return steps_for_budget(
        seconds,
        step_seconds,
        eval_seconds,
        config.eval_every_steps,
        CHECKPOINT_SECONDS,
        config.checkpoint_every_steps,
    )


def plan_steps_for_budget(
    config: ml_collections.ConfigDict,
    t_start: float,
    step_fn: Any,
    state: TrainState,
    loader: grain.DataLoader,
    mesh: jax.sharding.Mesh,
    key: jax.Array,
    predict_fn: Any,
    eval_src: Any,
) -> dict[str, Any]:
    """Chooses num_train_steps so that the whole run ends within config.train_minutes.

    Measures, on a throwaway copy of the initial state and a separate data iterator (the run's
    own batches and parameters are untouched): the compile time of the train step, the seconds
    per step over PROBE_STEPS steps, and one validation pass (which also compiles the predict
    function the run reuses). The budget counts from the start of train_and_evaluate; what is
    left after the probe, less a second compile and a margin (BUDGET_FILL), is split between
    steps, validations every eval_every_steps and checkpoints. Every process uses process 0's
    figures.
    """
    probe_state = jax.tree_util.tree_map(jnp.copy, state)
    it = iter(loader)

    def one_step(s: TrainState) -> TrainState:
        s, m = step_fn(s, global_batch(mesh, next(it)), key)
        jax.block_until_ready(m)
        return s

    t = time.perf_counter()
    probe_state = one_step(probe_state)
    compile_seconds = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(PROBE_STEPS):
        probe_state = one_step(probe_state)
    step_seconds = (time.perf_counter() - t) / PROBE_STEPS
    it = None  # stops the probe iterator's worker processes
    eval_loader = make_eval_loader(config, eval_src)
    first = next(iter(eval_loader))["image"]  # compile the predict function outside the timing
    jax.block_until_ready(
        predict_fn(eval_variables(probe_state), to_global(mesh, pad_to_local_devices(first)))
    )
    t = time.perf_counter()
    predict(predict_fn, eval_variables(probe_state), eval_loader, mesh)
    eval_seconds = time.perf_counter() - t
    del probe_state
    elapsed = time.perf_counter() - t_start
    figures = np.asarray([compile_seconds, step_seconds, eval_seconds, elapsed], np.float64)
    if jax.process_count() > 1:
        figures = np.asarray(multihost_utils.broadcast_one_to_all(figures))
    compile_seconds, step_seconds, eval_seconds, elapsed = (float(v) for v in figures)
    left = (config.train_minutes * 60.0 - elapsed - compile_seconds) * BUDGET_FILL
    if left < step_seconds + eval_seconds:
        raise TrainingError(
            f"config.train_minutes={config.train_minutes}: the set-up and speed probe took "
            f"{elapsed:.0f} s; not enough left for one step and one validation. Raise "
            "train_minutes."
        )
    steps = _steps_within(config, left, step_seconds, eval_seconds)
    hold = min(REPLAN_STEPS, steps // 4)
    replan = length_free_before_hold(config.schedule) and hold > REPLAN_FROM
    plan = {
        "train_minutes": config.train_minutes,
        "num_train_steps": steps,
        # the step at which the run fixes its length (see REPLAN_STEPS); 0: never, the plan is
        # final (a schedule that needs its length from the start, or a run too short to measure)
        "hold_steps": hold if replan else 0,
        "replanned": False,
        "step_seconds": step_seconds,
        "compile_seconds": compile_seconds,
        "eval_seconds": eval_seconds,
        "setup_seconds": elapsed,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
    }
    logging.info(
        "train_minutes=%s: %.3f s/step, %.1f s per validation, compile %.1f s -> %d steps "
        "(provisional until step %d)",
        config.train_minutes,
        step_seconds,
        eval_seconds,
        compile_seconds,
        steps,
        plan["hold_steps"],
    )
    return plan


def _steps_left(
    config: ml_collections.ConfigDict,
    plan: dict[str, Any],
    step_seconds: float,
    eval_seconds: float,
    elapsed: float,
) -> tuple[int, float, float, float]:
    """(steps that fill REPLAN_FILL of what is left of the budget after `elapsed` seconds and
    one more compile, and the step_seconds, eval_seconds and elapsed used), from process 0's
    figures on every process."""
    figures = np.asarray([step_seconds, eval_seconds, elapsed], np.float64)
    if jax.process_count() > 1:
        figures = np.asarray(multihost_utils.broadcast_one_to_all(figures))
    step_seconds, eval_seconds, elapsed = (float(v) for v in figures)
    left = (config.train_minutes * 60.0 - elapsed - plan["compile_seconds"]) * REPLAN_FILL
    more = _steps_within(config, left, step_seconds, eval_seconds)
    return (more if left > step_seconds + eval_seconds else 0), step_seconds, eval_seconds, elapsed


def replan_steps_for_budget(
    config: ml_collections.ConfigDict,
    plan: dict[str, Any],
    step: int,
    step_seconds: float,
    eval_seconds: float,
    elapsed: float,
) -> dict[str, Any]:
    """The final plan of a timed run at step ``plan["hold_steps"]``: from its measured rate
    (`step_seconds`, `eval_seconds`) and the `elapsed` seconds since it started, the most steps
    whose training, validations, checkpoints and one more compile fill REPLAN_FILL of what is
    left of config.train_minutes (at least `step`). Every process uses process 0's figures."""
    more, step_seconds, eval_seconds, elapsed = _steps_left(
        config, plan, step_seconds, eval_seconds, elapsed
    )
    final = {
        **plan,
        "num_train_steps": step + more,
        "replanned": True,
        "provisional_num_train_steps": plan["num_train_steps"],
        "measured_step_seconds": step_seconds,
        "measured_eval_seconds": eval_seconds,
        "elapsed_at_replan": elapsed,
    }
    logging.info(
        "train_minutes=%s: measured %.3f s/step and %.1f s per validation over steps %d-%d; "
        "%.0f s elapsed -> %d steps (provisional plan: %d)",
        config.train_minutes,
        step_seconds,
        eval_seconds,
        REPLAN_FROM,
        step,
        elapsed,
        final["num_train_steps"],
        plan["num_train_steps"],
    )
    return final


def late_check_steps(
    config: ml_collections.ConfigDict,
    plan: dict[str, Any],
    step: int,
    step_seconds: float,
    elapsed: float,
) -> dict[str, Any]:
    """The plan after the late check at ``step`` (see LATE_CHECK_AT): num_train_steps cut to
    the most steps that fill REPLAN_FILL of what is left of config.train_minutes at the
    measured `step_seconds` (validations and checkpoints counted in), if that is fewer than
    planned; otherwise unchanged. Records the check under "late_check". Every process uses
    process 0's figures. `step_seconds` already includes the validations and checkpoints."""
    more, step_seconds, _, elapsed = _steps_left(config, plan, step_seconds, 0.0, elapsed)
    planned = plan["num_train_steps"]
    steps = min(planned, step + more)
    logging.info(
        "train_minutes=%s: late check at step %d: %.3f s/step since the re-plan, %.0f s "
        "elapsed -> %d steps (%s)",
        config.train_minutes,
        step,
        step_seconds,
        elapsed,
        steps,
        "shortened" if steps < planned else "as planned",
    )
    return {
        **plan,
        "num_train_steps": steps,
        "late_check": {
            "step": step,
            "step_seconds": step_seconds,
            "elapsed": elapsed,
            "planned_num_train_steps": planned,
        },
    }


# --- the loop ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    """Per-step metrics still on the device, fetched at log and checkpoint steps."""

    steps: list[int] = dataclasses.field(default_factory=list)
    values: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)

    def fetch(self) -> list[tuple[int, dict[str, float]]]:
        got = jax.device_get(self.values)
        out = list(zip(self.steps, got, strict=True))
        self.steps, self.values = [], []
        return out


def _check_finite(fetched: list[tuple[int, dict[str, Any]]], last_good: int | None) -> None:
    """Raises at the first step whose loss or updated parameters are not finite."""
    for step, values in fetched:
        loss = float(values["loss"])
        if not (math.isfinite(loss) and bool(values["params_finite"])):
            where = (
                f"the last good checkpoint (step {last_good}) is untouched"
                if last_good is not None
                else "no checkpoint was written"
            )
            raise TrainingError(
                f"training diverged at step {step}: loss {loss}, parameters "
                f"{'finite' if values['params_finite'] else 'not finite'} after the update; "
                f"stopped without saving, {where}. Lower optimizer.learning_rate or set "
                "optimizer.grad_clip_norm."
            )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates it.

    Holds the workdir's lock (``workdir_lock``: one run per workdir) throughout. Returns the
    last validation metrics.
    """
    t_start = time.perf_counter()
    with workdir_lock(workdir):
        return _train_and_evaluate(config, Path(workdir), t_start)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: Path, t_start: float
) -> dict[str, Any]:
    check_config(config, workdir)
    if config.ema_decay < 0 or config.ema_decay >= 1:
        raise TrainingError(f"config.ema_decay={config.ema_decay}: expected 0 (off) or in (0, 1)")
    if not 0 <= config.label_smoothing < 1:
        raise TrainingError(f"config.label_smoothing={config.label_smoothing}: expected [0, 1)")
    if config.batch_size % jax.device_count():
        raise TrainingError(
            f"config.batch_size={config.batch_size} must be a multiple of the "
            f"{jax.device_count()} devices"
        )
    writer = metric_writers.create_default_writer(
        workdir, just_logging=not is_primary(), asynchronous=False
    )
    mesh = make_mesh()
    train_src = make_source(config, config.data.train_split)
    eval_src = make_source(config, config.data.eval_split)
    norm = norm_stats(config, train_src)
    augment = pipeline.AugmentConfig.from_mapping(config.augment.to_dict())
    loader = pipeline.make_loader(
        train_src,
        batch_size=config.batch_size // jax.process_count(),
        train=True,
        seed=config.seed,
        augment=augment,
        worker_count=config.data.worker_count,
        worker_buffer_size=config.data.worker_buffer_size,
        read_threads=config.data.read_threads,
        read_buffer=config.data.read_buffer,
        shard_options=pipeline.process_shard_options(),
    )
    train_iter = iter(loader)

    model = create_model(config)
    preprocess = make_preprocess(config, norm)
    plan = read_train_plan(workdir) if config.train_minutes > 0 else None
    if plan is not None and plan.get("train_minutes") != config.train_minutes:
        plan = None  # left by a start that failed before its first checkpoint: plan again
    num_train_steps = plan["num_train_steps"] if plan else config.num_train_steps

    def schedule_for(steps: int, plan: dict[str, Any] | None) -> optax.Schedule:
        hold = plan.get("hold_steps", 0) if plan else 0
        return make_schedule(config.schedule, steps, config.optimizer.learning_rate, hold)

    schedule = schedule_for(num_train_steps, plan)
    variables = initial_variables(config, model, jax.random.key(config.seed))
    mask = trainable_mask(model, variables["params"])
    tx = make_optimizer(config.optimizer, schedule, mask)
    batch_stats = variables.get("batch_stats", {})
    ema = None
    if config.ema_decay > 0:
        ema = jax.tree_util.tree_map(
            jnp.copy, {"params": variables["params"], "batch_stats": batch_stats}
        )
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=batch_stats,
        ema=ema,
        tx=tx,
    )
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
    store_config(config, workdir)  # data, model and optimizer were set up without error
    state = replicate(state, mesh)
    key = jax.jit(partial(jax.random.key, config.seed), out_shardings=NamedSharding(mesh, P()))()
    layout = {"processes": jax.process_count(), "workers": config.data.worker_count}
    mngr = checkpoint_manager(workdir, config.keep_checkpoints)
    last_good = mngr.latest_step()
    if last_good is not None:
        state = _restore_for_training(
            mngr, last_good, state, train_iter, loader, layout, norm, str(config.data.root)
        )
        logging.info("resumed from checkpoint %d in %s", last_good, mngr.directory)

    def compile_step(schedule: optax.Schedule) -> Any:
        return jax.jit(
            jax.shard_map(
                partial(
                    train_step,
                    preprocess=preprocess,
                    aux_loss_weight=config.aux_loss_weight,
                    schedule=schedule,
                    label_smoothing=config.label_smoothing,
                    ema_decay=config.ema_decay,
                ),
                mesh=mesh,
                in_specs=(P(), P(AXIS), P()),
                out_specs=(P(), P()),
            ),
            donate_argnums=(0,),
            compiler_options=compiler_options(),
        )

    step_fn = compile_step(schedule)
    predict_fn = make_predict_fn(model, preprocess, mesh)
    if config.train_minutes > 0 and plan is None:
        # a fresh timed run: measure this machine's speed, then size the schedule to the budget
        plan = plan_steps_for_budget(
            config, t_start, step_fn, state, loader, mesh, key, predict_fn, eval_src
        )
        num_train_steps = plan["num_train_steps"]
        schedule = schedule_for(num_train_steps, plan)
        state = state.replace(tx=make_optimizer(config.optimizer, schedule, mask))
        step_fn = compile_step(schedule)
        write_train_plan(workdir, plan)

    start = int(jax.device_get(state.step))
    # A timed run fixes its length at step plan["hold_steps"] from its own measured rate
    # (replan_steps_for_budget). A run resumed before that step cannot know how long its first
    # start ran, so it keeps the provisional plan.
    replan_at = 0
    if plan is not None and not plan.get("replanned", True) and plan.get("hold_steps", 0):
        if start < REPLAN_FROM:
            replan_at = plan["hold_steps"]
        elif start < plan["hold_steps"]:
            plan = {**plan, "replanned": "skipped: resumed before the re-plan step"}
            write_train_plan(workdir, plan)
    t_measure = paused_measure = 0.0
    late_at = replan_step = 0  # the late check's step, armed by this process's re-plan
    if start == 0 and is_primary():
        writer.write_hparams({k: v for k, v in flatten_config(config).items()})
        logging.info(
            "model %s: %d parameters; train %d / %s %d patches; %d devices",
            config.model.name,
            n_params,
            len(train_src),
            config.data.eval_split,
            len(eval_src),
            jax.device_count(),
        )
    hooks: list[Any] = [
        periodic_actions.ReportProgress(
            num_train_steps=num_train_steps,
            writer=writer,
            every_steps=config.log_every_steps,
        )
    ]
    if config.profile_steps > 0 and is_primary():
        hooks.append(
            periodic_actions.Profile(logdir=str(workdir), num_profile_steps=config.profile_steps)
        )
    pending = _Pending()
    train_metrics: Any = None
    val: dict[str, Any] = {}
    t_last = time.perf_counter()
    paused = 0.0  # seconds of validation and checkpointing inside the current log window
    paused_total = 0.0  # and since the start
    eval_seconds = plan.get("eval_seconds", 0.0) if plan else 0.0  # the last validation's
    with preemption_watcher() as watcher:
        step = start
        while step < num_train_steps:
            step += 1
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, step_metrics = step_fn(state, global_batch(mesh, next(train_iter)), key)
            pending.steps.append(step)
            pending.values.append(step_metrics)
            if step == REPLAN_FROM and replan_at:
                jax.block_until_ready(state)
                t_measure, paused_measure = time.perf_counter(), paused_total
            if step in (replan_at, late_at):
                jax.block_until_ready(state)
                now = time.perf_counter()
                if step == replan_at:
                    measured = (now - t_measure - (paused_total - paused_measure)) / (
                        step - REPLAN_FROM
                    )
                    plan = replan_steps_for_budget(
                        config, plan, step, measured, eval_seconds, now - t_start
                    )
                    late_at = step + round(LATE_CHECK_AT * (plan["num_train_steps"] - step))
                    late_at = late_at if step < late_at < plan["num_train_steps"] else 0
                    t_measure, paused_measure, replan_step = now, paused_total, step
                else:  # the late check: the rate since the re-plan, pauses included
                    measured = (now - t_measure) / (step - replan_step)
                    plan = late_check_steps(config, plan, step, measured, now - t_start)
                write_train_plan(workdir, plan)
                if plan["num_train_steps"] != num_train_steps:
                    num_train_steps = plan["num_train_steps"]
                    schedule = schedule_for(num_train_steps, plan)
                    state = state.replace(tx=make_optimizer(config.optimizer, schedule, mask))
                    step_fn = compile_step(schedule)
                    hooks[0] = periodic_actions.ReportProgress(
                        num_train_steps=num_train_steps,
                        writer=writer,
                        every_steps=config.log_every_steps,
                    )
            for hook in hooks:
                hook(step)
            is_last = step == num_train_steps
            if step % config.log_every_steps == 0 or is_last:
                fetched = pending.fetch()
                _check_finite(fetched, last_good)
                for _, values in fetched:
                    update = TrainMetrics.single_from_model_output(
                        loss=np.asarray(values["loss"]), accuracy=np.asarray(values["accuracy"])
                    )
                    train_metrics = update if train_metrics is None else train_metrics.merge(update)
                if train_metrics is not None:
                    scalars = {f"train_{k}": v for k, v in train_metrics.compute().items()}
                    scalars["learning_rate"] = float(fetched[-1][1]["learning_rate"])
                    # training steps only: validation and checkpoint time is logged on its own
                    elapsed = time.perf_counter() - t_last - paused
                    scalars["images_per_second"] = len(fetched) * config.batch_size / elapsed
                    writer.write_scalars(step, scalars)
                train_metrics, t_last, paused = None, time.perf_counter(), 0.0
            evaluated = False
            if step % config.eval_every_steps == 0 or is_last:
                jax.block_until_ready(state)  # the queued steps count as training, not validation
                t_eval = time.perf_counter()
                eval_loader = make_eval_loader(config, eval_src)
                pred = predict(predict_fn, eval_variables(state), eval_loader, mesh)
                val = binary_metrics(pred["label"], pred["p_tumour"], n_bootstrap=0)
                eval_seconds = time.perf_counter() - t_eval
                paused += eval_seconds
                paused_total += eval_seconds
                scalars = {f"val_{k}": val[k] for k in ("auc", "accuracy", "nll")}
                writer.write_scalars(step, {**scalars, "val_seconds": eval_seconds})
                evaluated = True
            preempted = watcher.stop(step)
            if step % config.checkpoint_every_steps == 0 or is_last or preempted:
                jax.block_until_ready(state)
                t_save = time.perf_counter()
                _check_finite(pending.fetch(), last_good)
                record = {
                    "step": step,
                    "norm": norm.to_json(),
                    "seed": config.seed,
                    "model": config.model.to_dict(),
                    "layout": layout,
                    "ema_decay": config.ema_decay,
                    "num_train_steps": num_train_steps,
                    "val": {k: val[k] for k in ("auc", "accuracy", "nll", "n")}
                    if evaluated
                    else None,
                }
                mngr.save(
                    step,
                    args=ocp.args.Composite(
                        **{
                            k: ocp.args.StandardSave(v) for k, v in _checkpoint_items(state).items()
                        },
                        data=grain.checkpoint.CheckpointSave(train_iter),
                        record=ocp.args.JsonSave(record),
                    ),
                    metrics={"val_auc": val["auc"]} if evaluated else None,
                    force=True,
                )
                mngr.wait_until_finished()
                last_good = step
                paused += time.perf_counter() - t_save
                paused_total += time.perf_counter() - t_save
            if preempted and not is_last:
                writer.flush()
                mngr.close()
                raise Preempted(step, watcher.signal_name or "signal")
    writer.flush()
    mngr.close()
    return val
