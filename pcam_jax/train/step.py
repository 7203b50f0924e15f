"""The train step: a pure function of (state, batch, rng), and the state it advances.

``train_step`` runs on one device's share of the global batch inside ``jax.shard_map`` over the
1-D mesh of every device (axis ``data``; pmap semantics): the device computes its gradient,
``pmean`` averages gradients and BatchNorm statistics over ``data``, every device applies the
same update to its replica of the parameters and optimizer state. ``compile_train_step`` wraps
it in jit(shard_map) with the state donated. The dropout key is derived from the run's key, the
step and the device index, so a step's result depends only on its inputs (bitwise resume).
With ``augment.where`` resolved to ``"device"`` the step first augments its shard of the uint8
batch (``pcam_jax.data.device_augment``: D4, HED and colour jitter, drawn from the run's key, the
step and each example's position in the global batch), then normalises; the loader then only
reads and batches.

``TrainState`` is flax's TrainState plus the BatchNorm statistics and, with ``ema_decay > 0``,
the exponential moving average of both (``update_ema`` at ``ema_decay_at``), which validation
and pcam-eval use. The loss is softmax cross-entropy (label smoothing optional) in float32,
plus ``aux_loss_weight`` x the auxiliary head's for Inception; with ``distill_weight`` w > 0 the
batch carries the teacher's p(tumour) (``train.distill``) and the loss is (1 - w) x that plus
w x the cross-entropy against the teacher's two-class distribution. Imports: infer.model (the input
transform and output conventions inference shares), data.device_augment, runtime,
train.distill (the weight).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metrics
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from pcam_jax.data import device_augment
from pcam_jax.data.pipeline import AugmentConfig
from pcam_jax.infer.model import Preprocess, cast_floats, split_outputs
from pcam_jax.runtime.distributed import AXIS
from pcam_jax.runtime.xla_options import compiler_options
from pcam_jax.train.distill import distill_weight


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


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of integer labels (B,) against logits (B, K).

    With ``smoothing`` s > 0 the targets are (1 - s) one-hot + s / K (label smoothing).
    """
    logits = logits.astype(jnp.float32)
    if smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def distill_loss(
    label_loss: jax.Array, logits: jax.Array, teacher: jax.Array, weight: float
) -> jax.Array:
    """(1 - weight) x label_loss + weight x the mean cross-entropy of logits (B, 2) against the
    teacher's distribution (1 - t, t), t = teacher (B,) its p(tumour)."""
    t = teacher.astype(jnp.float32)
    soft = optax.softmax_cross_entropy(logits.astype(jnp.float32), jnp.stack([1 - t, t], -1))
    return (1.0 - weight) * label_loss + weight * soft.mean()


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
    augment: AugmentConfig | None = None,
    distill_weight: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on this device's share of the batch; call inside shard_map over 'data'.

    rng is the run's base key: the step's dropout key is derived from it, the
    step number and the device index, so the step is a pure function. With
    `augment` (static) the uint8 images are first augmented on the device, each
    example from the key, the step and its global position
    (``device_augment.augment_shard``). With ema_decay > 0 the EMA of the
    updated parameters and BatchNorm statistics is advanced too (``ema_decay_at``). With
    distill_weight > 0, batch["teacher"] (B,) holds the teacher's p(tumour) (``distill_loss``).
    """
    images = batch["image"]
    if augment is not None:
        images = device_augment.augment_shard(images, rng, state.step, augment, AXIS)
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    images = preprocess(images)
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
        if distill_weight > 0:
            loss = distill_loss(loss, logits, batch["teacher"], distill_weight)
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


def compile_train_step(
    config: ml_collections.ConfigDict,
    preprocess: Preprocess,
    schedule: optax.Schedule,
    mesh: jax.sharding.Mesh,
) -> Any:
    """jit(shard_map(train_step)) for `config`: (state, global batch, key) -> (state, metrics).

    The batch is split over the ``data`` axis, state and key are replicated; the state argument
    is donated. The step augments on the device when ``config.augment.where`` resolves to
    ``"device"`` on this platform (``device_augment.split_augment``).
    """
    _, augment = device_augment.split_augment(config.augment.to_dict(), jax.default_backend())
    return jax.jit(
        jax.shard_map(
            partial(
                train_step,
                preprocess=preprocess,
                aux_loss_weight=config.aux_loss_weight,
                schedule=schedule,
                label_smoothing=config.label_smoothing,
                ema_decay=config.ema_decay,
                augment=augment,
                distill_weight=distill_weight(config),
            ),
            mesh=mesh,
            in_specs=(P(), P(AXIS), P()),
            out_specs=(P(), P()),
        ),
        donate_argnums=(0,),
        compiler_options=compiler_options(),
    )
