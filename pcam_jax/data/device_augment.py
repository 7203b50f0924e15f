"""Training augmentation on the accelerator: D4, HED stain jitter and colour jitter as pure JAX
functions of a uint8 batch, applied inside the jit-compiled train step.

The transforms, their parameter distributions and their order are the host path's
(``pipeline.RandomAugment``); only the random streams differ. Continuous rotation
(``rotate_degrees``) stays on the host.

Where augmentation runs (``augment.where``)
-------------------------------------------
``"host"``: grain's workers augment each record (``pipeline.RandomAugment``). ``"device"``: the
loader only reads, shuffles and batches uint8; the train step augments its shard of the batch
before normalising. ``"auto"``: ``resolve_where``, the one rule, picks ``"device"`` on GPU and
TPU platforms and ``"host"`` on CPU (and ``"host"`` whenever ``rotate_degrees`` is set, which
only the host does). This is the rule until ``bench/epoch.py`` measures otherwise: the accelerator
augments a batch in microseconds while a 2-core host spends most of its input time there; on a
CPU-only machine the "device" is the host's cores, which the loader's workers already use.

Randomness (the rule that makes it independent of the layout)
-------------------------------------------------------------
The example at position ``p`` of the global batch of step ``s`` draws from::

    k(p) = fold_in(fold_in(fold_in(key, AUGMENT_STREAM), s), p)

``key`` is the run's key (``jax.random.key(config.seed)``, the one the step's dropout keys come
from); ``AUGMENT_STREAM`` keeps these draws apart from the dropout keys ``fold_in(fold_in(key,
s), device)``. Inside ``shard_map`` device ``d`` holds rows ``[d b, (d + 1) b)`` of the global
batch, so ``p = d b + row`` (``augment_shard``), and the global batch is the same whatever the
number of processes, devices and grain workers (``pipeline.GlobalBatchSampler``). An example's
augmentation is therefore a function of (seed, step, position) alone: the same on 1 or 8 devices,
and a resumed run (whose step comes from its checkpoint) draws what the uninterrupted run drew.
Each parameter comes from its own ``fold_in(k(p), field)`` (``_FIELDS``), so adding a field
changes no other.

Distributions and order (as on the host)
----------------------------------------
- D4 index ``g`` uniform over 0..7: ``rot90`` by ``g // 2`` quarter turns, then a left-right
  mirror if ``g`` is odd (the order of ``pipeline.d4_pixel_permutations``); an exact pixel
  permutation, done as (transpose?, flip rows?, flip columns?) with elementwise selects
  (``_D4_AS_FLIPS``, found from ``pipeline.d4_transform``; no gather, slow on TPUs).
- HED: ``alpha ~ U(1 - hed_sigma, 1 + hed_sigma)^3``, ``beta ~ U(-hed_bias, hed_bias)^3``.
- Colour, in this order: brightness, contrast, saturation ``~ U(1 - s, 1 + s)``; hue rotation by
  ``U(-h, h)`` turns in YIQ.

D4 comes first, then (in float32) HED, then colour; a part whose config field is 0 is left out
at trace time, as the host skips it. A photometric result is rounded and clipped to [0, 255]
exactly like the host's (``clip(rint(x))``) but kept as float32, which the step normalises; with
D4 alone the batch stays uint8. The 3x3 colour mixes run at HIGHEST precision, so GPUs (TF32)
and TPUs (bf16 passes) compute them in float32 as numpy does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax.data.pipeline import (
    AUGMENT_WHERE,
    HED_FROM_RGB,
    RGB_FROM_HED,
    RGB_TO_YIQ,
    YIQ_TO_RGB,
    AugmentConfig,
    d4_transform,
)

#: Platforms (``jax.default_backend()``) where ``"auto"`` augments on the device.
DEVICE_PLATFORMS: frozenset[str] = frozenset({"gpu", "cuda", "rocm", "tpu"})
#: Folded into the run's key before the step: the augmentation's own stream ("aug").
AUGMENT_STREAM = 0x617567
#: fold_in number of each parameter within an example's key.
_FIELDS = {
    "d4": 0,
    "alpha": 1,
    "beta": 2,
    "brightness": 3,
    "contrast": 4,
    "saturation": 5,
    "hue": 6,
}
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Where it runs
# ---------------------------------------------------------------------------------------------


def resolve_where(where: str, platform: str, rotate_degrees: float = 0.0) -> str:
    """``"host"`` or ``"device"``: where ``augment.where`` augments on `platform`.

    ``"auto"`` is ``"device"`` on GPU and TPU platforms and ``"host"`` on CPU, or whenever
    ``rotate_degrees`` is set (the device path has no continuous rotation).
    """
    if where not in AUGMENT_WHERE:
        raise ValueError(f"augment.where={where!r}: expected one of {AUGMENT_WHERE}")
    if where != "auto":
        return where
    if rotate_degrees:
        return "host"
    return "device" if platform in DEVICE_PLATFORMS else "host"


def split_augment(
    fields: Mapping[str, Any], platform: str
) -> tuple[AugmentConfig, AugmentConfig | None]:
    """(what the grain loader applies, what the train step applies or None) for the
    ``augment.*`` fields on `platform`; with ``"device"`` the loader's part is all off."""
    fields = dict(fields)
    where = fields.pop("where", "host")
    cfg = AugmentConfig.from_mapping(fields)
    if resolve_where(where, platform, cfg.rotate_degrees) == "host":
        return cfg, None
    if not (cfg.d4 or cfg.photometric):
        return cfg, None  # nothing to augment: the step stays as it was
    if cfg.rotate_degrees:
        raise ValueError(
            f"augment.rotate_degrees={cfg.rotate_degrees}: continuous rotation runs on the host "
            "only; set augment.where=host (or auto) or rotate_degrees=0"
        )
    return AugmentConfig(), cfg


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


class AugmentParams(NamedTuple):
    """Per-example parameters of a batch of B (leading axis B on every field)."""

    d4: jax.Array  # (B,) int32 in [0, 8): index 2 * quarter_turns + mirror
    alpha: jax.Array  # (B, 3) float32: H, E, D optical-density scales
    beta: jax.Array  # (B, 3) float32: H, E, D optical-density shifts
    brightness: jax.Array  # (B,) float32 factor
    contrast: jax.Array  # (B,) float32 factor
    saturation: jax.Array  # (B,) float32 factor
    hue: jax.Array  # (B,) float32 rotation in turns


def example_keys(key: jax.Array, step: jax.Array | int, positions: jax.Array) -> jax.Array:
    """(B,) keys ``fold_in(fold_in(fold_in(key, AUGMENT_STREAM), step), p)`` of the global
    positions `positions` (B,) at `step`."""
    base = jax.random.fold_in(jax.random.fold_in(key, AUGMENT_STREAM), step)
    return jax.vmap(lambda p: jax.random.fold_in(base, p))(positions)


def _draw_one(key: jax.Array, cfg: AugmentConfig) -> AugmentParams:
    def uniform(
        field: str, half_width: float, centre: float, shape: tuple[int, ...] = ()
    ) -> jax.Array:
        k = jax.random.fold_in(key, _FIELDS[field])
        return jax.random.uniform(k, shape, jnp.float32, centre - half_width, centre + half_width)

    return AugmentParams(
        d4=jax.random.randint(jax.random.fold_in(key, _FIELDS["d4"]), (), 0, 8, jnp.int32),
        alpha=uniform("alpha", cfg.hed_sigma, 1.0, (3,)),
        beta=uniform("beta", cfg.hed_bias, 0.0, (3,)),
        brightness=uniform("brightness", cfg.brightness, 1.0),
        contrast=uniform("contrast", cfg.contrast, 1.0),
        saturation=uniform("saturation", cfg.saturation, 1.0),
        hue=uniform("hue", cfg.hue, 0.0),
    )


def draw_params(keys: jax.Array, cfg: AugmentConfig) -> AugmentParams:
    """The parameters of each example (one key each, (B,)) under `cfg`'s distributions."""
    return jax.vmap(lambda k: _draw_one(k, cfg))(keys)


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------


def _as_flips(g: int) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns), applied in that order, equal to D4 element g."""
    idx = np.arange(16).reshape(4, 4)
    target = d4_transform(idx, g // 2, bool(g % 2))
    for t in (False, True):
        for fr in (False, True):
            for fc in (False, True):
                x = idx.T if t else idx
                x = x[::-1] if fr else x
                x = x[:, ::-1] if fc else x
                if np.array_equal(x, target):
                    return t, fr, fc
    raise AssertionError(f"D4 element {g} is not a composition of flips")


_D4_AS_FLIPS = np.array([_as_flips(g) for g in range(8)], dtype=bool)  # (8, 3)


def d4(images: jax.Array, index: jax.Array) -> jax.Array:
    """D4 element ``index[i]`` (0..7) of each square image (B, H, H, C); any dtype, exact."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"d4 needs square images, got {images.shape}")
    flags = jnp.asarray(_D4_AS_FLIPS)[index]  # (B, 3)

    def pick(flag: jax.Array, changed: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.where(flag[:, None, None, None], changed, x)

    x = pick(flags[:, 0], jnp.swapaxes(images, 1, 2), images)
    x = pick(flags[:, 1], x[:, ::-1], x)
    return pick(flags[:, 2], x[:, :, ::-1], x)


def _mix(x: jax.Array, matrix: np.ndarray | jax.Array) -> jax.Array:
    """x @ matrix over the last axis, in float32 on every platform."""
    return jnp.einsum("...i,ij->...j", x, jnp.asarray(matrix, jnp.float32), precision=_HIGHEST)


def _luma(x: jax.Array) -> jax.Array:
    """The YIQ luma (B, H, W) of float RGB (B, H, W, 3)."""
    return _mix(x, RGB_TO_YIQ[0][:, None])[..., 0]


def hed_jitter(x: jax.Array, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """``pipeline.hed_jitter`` per example: float32 RGB (B, H, W, 3) in [0, 255], alpha and
    beta (B, 3)."""
    od = -jnp.log((x + 1.0) / 256.0)
    hed = _mix(od, HED_FROM_RGB)
    od = _mix(hed * alpha[:, None, None, :] + beta[:, None, None, :], RGB_FROM_HED)
    return jnp.exp(-od) * 256.0 - 1.0


def _hue_matrices(turns: jax.Array) -> jax.Array:
    """(B, 3, 3): YIQ_TO_RGB @ rot(2 pi turns) @ RGB_TO_YIQ, the host's hue rotation."""
    angle = 2 * jnp.pi * turns
    c, s = jnp.cos(angle), jnp.sin(angle)
    one, zero = jnp.ones_like(c), jnp.zeros_like(c)
    rot = jnp.stack(
        [
            jnp.stack([one, zero, zero], -1),
            jnp.stack([zero, c, -s], -1),
            jnp.stack([zero, s, c], -1),
        ],
        -2,
    )
    to_rgb, to_yiq = jnp.asarray(YIQ_TO_RGB), jnp.asarray(RGB_TO_YIQ)
    return jnp.einsum("ij,bjk,kl->bil", to_rgb, rot, to_yiq, precision=_HIGHEST)


def colour_jitter(x: jax.Array, params: AugmentParams, cfg: AugmentConfig) -> jax.Array:
    """``pipeline._jitter_colour`` per example, on float32 RGB (B, H, W, 3): brightness,
    contrast, saturation, hue, each only when its `cfg` field is set."""

    def per_image(v: jax.Array) -> jax.Array:
        return v[:, None, None, None]

    if cfg.brightness:
        x = x * per_image(params.brightness)
    if cfg.contrast:
        mean = per_image(jnp.mean(_luma(x), axis=(1, 2)))
        x = (x - mean) * per_image(params.contrast) + mean
    if cfg.saturation:
        gray = _luma(x)[..., None]
        x = (x - gray) * per_image(params.saturation) + gray
    if cfg.hue:
        x = jnp.einsum("bhwi,bji->bhwj", x, _hue_matrices(params.hue), precision=_HIGHEST)
    return x


def augment(images: jax.Array, params: AugmentParams, cfg: AugmentConfig) -> jax.Array:
    """The augmented batch: uint8 (B, H, W, 3) -> uint8 (D4 alone) or float32 holding uint8
    values (photometric parts), under `cfg` (static) with `params`."""
    if cfg.rotate_degrees:
        raise ValueError("augment.rotate_degrees: continuous rotation runs on the host only")
    x = d4(images, params.d4) if cfg.d4 else images
    if not cfg.photometric:
        return x
    x = x.astype(jnp.float32)
    if cfg.hed_sigma or cfg.hed_bias:
        x = hed_jitter(x, params.alpha, params.beta)
    x = colour_jitter(x, params, cfg)
    return jnp.clip(jnp.rint(x), 0.0, 255.0)


def augment_batch(
    images: jax.Array,
    key: jax.Array,
    step: jax.Array | int,
    offset: jax.Array | int,
    cfg: AugmentConfig,
) -> jax.Array:
    """Augments rows ``offset + [0, B)`` of step `step`'s global batch (see the module's
    randomness rule); `key` is the run's key."""
    positions = offset + jnp.arange(images.shape[0], dtype=jnp.int32)
    return augment(images, draw_params(example_keys(key, step, positions), cfg), cfg)


def augment_shard(
    images: jax.Array, key: jax.Array, step: jax.Array | int, cfg: AugmentConfig, axis: str
) -> jax.Array:
    """``augment_batch`` of this device's shard inside ``shard_map`` over mesh axis `axis`:
    device d holds global rows ``d B + [0, B)``."""
    offset = jax.lax.axis_index(axis) * images.shape[0]
    return augment_batch(images, key, step, offset, cfg)
