"""Optax optimizers and learning-rate schedules from the `optimizer.*` and `schedule.*` fields.

Schedules are functions of the optimizer step, so the learning rate changes
every batch (the study stepped its scheduler per epoch by mistake).
"""

from __future__ import annotations

from typing import Any

import optax


def make_schedule(
    cfg: Any, num_train_steps: int, peak: float, hold_steps: int = 0
) -> optax.Schedule:
    """The learning-rate schedule named by `cfg.name`, peaking at `peak`.

    hold_steps (cosine only): the rate stays at `peak` from the end of the warm-up until this
    step, and the cosine decays from there to `num_train_steps`. Before `hold_steps` the
    schedule is then the same whatever `num_train_steps` is, which is what lets a timed run
    (config.train_minutes) fix its length after measuring its own speed.
    """
    name = cfg.name
    if name == "constant":
        return optax.constant_schedule(peak)
    if name == "step":
        return optax.exponential_decay(
            peak,
            transition_steps=cfg.decay_every_steps,
            decay_rate=cfg.decay_factor,
            staircase=True,
        )
    if name == "cosine" and hold_steps > cfg.warmup_steps:
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, peak, cfg.warmup_steps),
                optax.constant_schedule(peak),
                optax.cosine_decay_schedule(
                    peak, max(num_train_steps - hold_steps, 1), alpha=cfg.final_fraction
                ),
            ],
            boundaries=[cfg.warmup_steps, hold_steps],
        )
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=cfg.warmup_steps,
            decay_steps=max(num_train_steps, cfg.warmup_steps + 1),
            end_value=peak * cfg.final_fraction,
        )
    if name == "one_cycle":
        return optax.cosine_onecycle_schedule(
            transition_steps=num_train_steps,
            peak_value=peak,
            div_factor=1.0 / cfg.min_fraction,
        )
    if name == "cyclic":
        return triangular_schedule(peak * cfg.min_fraction, peak, cfg.cycle_steps)
    raise ValueError(
        f"unknown schedule.name {name!r}: expected constant, step, cosine, one_cycle or cyclic"
    )


def length_free_before_hold(cfg: Any) -> bool:
    """Whether schedule `cfg`, built with ``hold_steps=H``, takes the same values before step H
    whatever num_train_steps is (cosine, constant, step, cyclic; not one_cycle)."""
    return cfg.name != "one_cycle"


def triangular_schedule(low: float, high: float, cycle_steps: int) -> optax.Schedule:
    """Smith's triangular cyclic learning rate: low -> high -> low every `cycle_steps`."""
    import jax.numpy as jnp

    if cycle_steps < 2:
        raise ValueError(f"schedule.cycle_steps={cycle_steps}: must be at least 2")
    half = cycle_steps / 2

    def schedule(step: Any) -> Any:
        phase = jnp.mod(step, cycle_steps) / half  # 0 .. 2
        return low + (high - low) * (1.0 - jnp.abs(phase - 1.0))

    return schedule


def make_optimizer(
    cfg: Any, schedule: optax.Schedule, trainable_mask: Any = None, head_mask: Any = None
) -> optax.GradientTransformation:
    """The optimizer named by `cfg.name` with weight decay and gradient clipping.

    trainable_mask: optional pytree of bools (True = trained); False leaves get
    zero updates (a frozen backbone).
    head_mask: optional pytree of bools, True for a transfer model's new heads. With
    ``cfg.backbone_lr_scale != 1`` the other (pretrained) parameters get their own copy of the
    optimizer whose updates are scaled by it, i.e. the schedule's rate times the scale, weight
    decay included; clipping then applies to each part's gradient norm separately.
    """
    scale = cfg.get("backbone_lr_scale", 1.0)
    split = head_mask is not None and scale != 1.0
    if trainable_mask is None and not split:
        return _base_optimizer(cfg, schedule)
    import jax

    def label(trained: bool, head: bool) -> str:
        if not trained:
            return "freeze"
        return "backbone" if split and not head else "train"

    trained = trainable_mask if trainable_mask is not None else head_mask
    if trainable_mask is None:
        trained = jax.tree_util.tree_map(lambda _: True, head_mask)
    heads = head_mask if head_mask is not None else trained
    labels = jax.tree_util.tree_map(label, trained, heads)
    transforms = {"train": _base_optimizer(cfg, schedule), "freeze": optax.set_to_zero()}
    if split:
        transforms["backbone"] = optax.chain(_base_optimizer(cfg, schedule), optax.scale(scale))
    return optax.multi_transform(transforms, labels)


def _base_optimizer(cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    name = cfg.name
    parts: list[optax.GradientTransformation] = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.weight_decay > 0 and name != "adamw":
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    if name == "adam":
        parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    elif name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=kernels_only,
            )
        )
    elif name == "sgd":
        parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif name == "rmsprop":
        parts.append(
            optax.rmsprop(schedule, decay=cfg.decay, eps=cfg.eps, momentum=cfg.momentum or None)
        )
    else:
        raise ValueError(f"unknown optimizer.name {name!r}: expected adam, adamw, sgd or rmsprop")
    return optax.chain(*parts)


def kernels_only(params: Any) -> Any:
    """True for the leaves AdamW decays: kernels (ndim >= 2), not biases or BN scales/offsets."""
    import jax

    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)
