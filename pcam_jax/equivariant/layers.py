"""Thin flax.linen modules over the pure functions in ``pcam_jax.equivariant.groups``.

Feature maps are NHWC with the group folded into the channel axis, group axis inner
(channel ``c * |G| + g``); see ``equivariant.groups``. With ``group="z2"`` every module reduces to
its plain CNN counterpart, so plain and group models share one code path.

Each conv layer holds only its base kernel and expands it with one static gather; the layer is
then ONE ``lax.conv_general_dilated``. Initialisation is He-normal scaled by the fan-in of the
expanded kernel (k * k * Cin * |G_in|), so activations keep their scale whatever the group.
Window geometry is checked at trace time against the exact-equivariance rule
(``groups.window_is_equivariant``) unless ``check_geometry=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from pcam_jax.equivariant import groups

Initializer = Callable[..., jax.Array]


def he_init(in_axis: tuple[int, ...], out_axis: int) -> Initializer:
    """He-normal (truncated) with the fan-in taken over ``in_axis`` of the base kernel."""
    return nn.initializers.variance_scaling(
        2.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis
    )


def _check(x: jax.Array, kernel: int, stride: int, padding: groups.Padding, what: str) -> None:
    for size in x.shape[1:3]:
        groups.check_window(size, kernel, stride, padding, what)


class LiftingConv(nn.Module):
    """Z2 -> G convolution: (N, H, W, Cin) -> (N, H', W', features*|G|).

    ``LiftingConv(T_h x) = L_h LiftingConv(x)``. Bias is shared by the |G| copies of a feature.
    """

    features: int
    kernel_size: int = 3
    group: str = "p4"
    strides: int = 1
    padding: groups.Padding = "SAME"
    use_bias: bool = True
    check_geometry: bool = True
    precision: lax.Precision | None = None
    kernel_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if self.check_geometry:
            _check(x, k, self.strides, self.padding, self.name or "LiftingConv")
        init = self.kernel_init or he_init((0, 1, 2), 3)
        w = self.param("kernel", init, (k, k, x.shape[-1], self.features), jnp.float32)
        y = groups.lifting_conv(x, w, self.group, self.strides, self.padding, self.precision)
        if self.use_bias:
            b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + jnp.repeat(b, groups.group_order(self.group)).astype(y.dtype)
        return y


class GroupConv(nn.Module):
    """G -> G convolution: (N, H, W, Cin*|G|) -> (N, H', W', features*|G|).

    ``GroupConv(L_h x) = L_h GroupConv(x)``. Base kernel (k, k, Cin, |G|, features).
    """

    features: int
    kernel_size: int = 3
    group: str = "p4"
    strides: int = 1
    padding: groups.Padding = "SAME"
    use_bias: bool = True
    check_geometry: bool = True
    precision: lax.Precision | None = None
    kernel_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, n = self.kernel_size, groups.group_order(self.group)
        if self.check_geometry:
            _check(x, k, self.strides, self.padding, self.name or "GroupConv")
        if x.shape[-1] % n:
            raise ValueError(f"channels {x.shape[-1]} not a multiple of |G| = {n}")
        init = self.kernel_init or he_init((0, 1, 2, 3), 4)
        shape = (k, k, x.shape[-1] // n, n, self.features)
        w = self.param("kernel", init, shape, jnp.float32)
        y = groups.group_conv(x, w, self.group, self.strides, self.padding, self.precision)
        if self.use_bias:
            b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + jnp.repeat(b, n).astype(y.dtype)
        return y


class GroupBatchNorm(nn.Module):
    """Batch norm with statistics and affine parameters (C,) shared by the |G| copies.

    Train mode uses batch statistics over (N, H, W, G) and updates ``batch_stats``; both modes
    are equivariant since the statistics are invariant under L_h.
    """

    group: str = "p4"
    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    axis_name: str | None = None  # average batch statistics over this device axis
    scale_init: Initializer = nn.initializers.ones  # zeros: a residual branch starts at zero

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        c = x.shape[-1] // groups.group_order(self.group)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", self.scale_init, (c,)) if self.use_scale else None
        bias = self.param("bias", nn.initializers.zeros, (c,)) if self.use_bias else None
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = groups.group_moments(x, self.group, self.axis_name)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var
        return groups.group_normalize(x, mean, var, scale, bias, self.group, self.epsilon)


class GroupPool(nn.Module):
    """Pool over the group axis: (N, H, W, C*|G|) -> (N, H, W, C); result transforms by T_h."""

    group: str = "p4"
    reduce: Literal["max", "mean"] = "max"

    def __call__(self, x: jax.Array) -> jax.Array:
        return groups.group_pool(x, self.group, self.reduce)


class GroupDropout(nn.Module):
    """Dropout of whole feature maps: one mask entry per (sample, channel), shared over H, W and
    the |G| copies. With the same rng it is exactly equivariant in train mode (the mask is
    invariant under L_h), unlike element-wise dropout.
    """

    rate: float
    group: str = "p4"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if self.rate == 0.0 or deterministic:
            return x
        y = groups.split_group(x, self.group)
        y = nn.Dropout(self.rate, broadcast_dims=(1, 2, 4))(y, deterministic=False)
        return y.reshape(x.shape)


def conv_layer(
    features: int,
    kernel_size: int,
    group: str,
    lifting: bool,
    name: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """LiftingConv for the first layer (Z2 input), GroupConv after; plain conv when z2."""
    cls = LiftingConv if (lifting or group == "z2") else GroupConv
    return cls(features, kernel_size, group=group, name=name, **kwargs)


def spatial_pool(
    x: jax.Array,
    kind: Literal["max", "avg"] = "max",
    window: int = 2,
    stride: int = 2,
    padding: groups.Padding = "VALID",
    check_geometry: bool = True,
) -> jax.Array:
    """Max/average pooling over H, W of (group) feature maps, geometry-checked like the convs."""
    if check_geometry:
        _check(x, window, stride, padding, f"{kind}_pool")
    fn = groups.max_pool if kind == "max" else groups.avg_pool
    return fn(x, window, stride, padding)


def scaled_width(features: int, group: str, multiplier: float = 1.0) -> int:
    """Channels per group copy that keep the parameter count of a Z2 layer with ``features``
    channels: ``features / sqrt(|G|)`` (a G-conv has |G| times the weights per channel pair)."""
    return max(1, round(features * multiplier / groups.group_order(group) ** 0.5))
