"""Pure group math for rotation-equivariant CNNs on the square grid (GrouPy-style).

Groups
------
``"z2"``  the trivial group (1 element): plain CNNs, so that plain and group models share code.
``"p4"``  C4, rotations by multiples of 90 degrees (4 elements).
``"p4m"`` D4, rotations and reflections (8 elements).

An element is a pair ``(m, r)`` with ``m`` in {0, 1} (mirror) and ``r`` in {0, 1, 2, 3} (quarter
turns), stored at index ``g = 4 * m + r``. It acts on the plane as ``T_g = R^r F^m``: first mirror
the width axis (``F``), then rotate by ``r`` quarter turns with ``np.rot90`` in the (H, W) plane
(``R``). The group law follows from ``F R = R^-1 F``::

    (m1, r1) (m2, r2) = (m1 xor m2, r1 + (-1)^m1 r2 mod 4)

Layout of group feature maps
----------------------------
NHWC with the group folded into the channel axis, **group axis inner**: channel ``c * |G| + g``
holds copy ``g`` of feature ``c``, i.e. ``x.reshape(N, H, W, C, |G|)``. Concatenating two group
feature maps along the channel axis keeps this layout.

Action on group feature maps (the regular representation)::

    [L_h f](p, g) = f(T_h^-1 p, h^-1 g)

``transform_group_features`` implements it: rotate/mirror the spatial axes and permute the group
axis. Every layer here satisfies ``layer(L_h x) = L_h layer(x)``; Z2 inputs (images) transform by
the spatial part only.

Exact equivariance on a finite grid (the geometry rule)
-------------------------------------------------------
A sliding-window op (convolution or pooling) with kernel ``k``, stride ``s`` and padding
``(lo, hi)`` on an axis of size ``n`` commutes with the dihedral group acting about the centre of
the image if and only if its windows are placed symmetrically::

    lo == hi   and   (n + lo + hi - k) % s == 0

Examples on 96x96 inputs: 3x3 stride 1 'SAME' (pad 1, 1): exact. 2x2 max-pool stride 2 'VALID':
exact (the windows tile 96 exactly). 4x4 stride 2 'SAME' (pad 1, 1): exact. 3x3 stride 2 'SAME'
on 96 (pad 0, 1): NOT exact, and 3x3 stride 2 with any symmetric padding on an even size is not
either (93 + 2p is odd). ``window_is_equivariant`` states the rule; the models only use
geometries that pass it (the layers check it at trace time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

GroupName = Literal["z2", "p4", "p4m"]
Padding = str | int | Sequence[tuple[int, int]]

GROUPS: tuple[str, ...] = ("z2", "p4", "p4m")
_ORDERS = {"z2": 1, "p4": 4, "p4m": 8}


# ---------------------------------------------------------------------------------------------
# Static tables
# ---------------------------------------------------------------------------------------------


def group_order(group: str) -> int:
    """Number of elements |G| of ``group`` (1, 4 or 8)."""
    try:
        return _ORDERS[group]
    except KeyError:
        raise ValueError(f"unknown group {group!r}; expected one of {GROUPS}") from None


def elements(group: str) -> np.ndarray:
    """Elements as an int array (|G|, 2) of (mirror m, quarter turns r); index g = 4 m + r."""
    n = group_order(group)
    return np.array([(g // 4, g % 4) for g in range(n)], dtype=np.int32)


def element_index(m: int, r: int) -> int:
    """Index of the element (m, r)."""
    return 4 * (m % 2) + (r % 4)


def cayley_table(group: str) -> np.ndarray:
    """Composition table (|G|, |G|): ``table[a, b]`` is the index of ``a b`` (b acts first)."""
    els = elements(group)
    n = len(els)
    table = np.zeros((n, n), dtype=np.int32)
    for a, (m1, r1) in enumerate(els):
        for b, (m2, r2) in enumerate(els):
            sign = -1 if m1 else 1
            table[a, b] = element_index(m1 ^ m2, r1 + sign * r2)
    return table


def inverses(group: str) -> np.ndarray:
    """Inverse table (|G|,): ``table[a, inverses[a]] == 0`` (the identity)."""
    table = cayley_table(group)
    return np.argmax(table == 0, axis=1).astype(np.int32)


def regular_permutation(group: str, g: int) -> np.ndarray:
    """Group-axis permutation of the regular representation of ``g``: ``new[h] = old[perm[h]]``.

    ``perm[h] = g^-1 h``, so that ``[L_g f](., h) = f(., g^-1 h)``.
    """
    return cayley_table(group)[inverses(group)[g]]


# ---------------------------------------------------------------------------------------------
# Action on the plane and on group feature maps
# ---------------------------------------------------------------------------------------------


ArrayT = TypeVar("ArrayT", jax.Array, np.ndarray)


def transform_plane(x: ArrayT, group: str, g: int, axes: tuple[int, int] = (1, 2)) -> ArrayT:
    """Apply ``T_g`` (mirror the second axis if m, then rot90 r times) to the spatial ``axes``.

    Works on numpy and jax arrays; for NHWC images use the default ``axes=(1, 2)``.
    Exact (a pixel permutation) for any square array.
    """
    m, r = elements(group)[g]
    xp = np if isinstance(x, np.ndarray) else jnp
    if m:
        x = xp.flip(x, axis=axes[1])
    if r:
        x = xp.rot90(x, k=int(r), axes=axes)
    return x


def transform_group_features(x: jax.Array | np.ndarray, group: str, g: int) -> jax.Array:
    """Regular action ``L_g`` on NHWC group features (channels C*|G|, group axis inner).

    Spatially transforms by ``T_g`` and permutes the group axis by ``g^-1 h``.
    For ``group == "z2"`` inputs, or to act on images, use ``transform_plane``.
    """
    n = group_order(group)
    x = transform_plane(x, group, g)
    c = x.shape[-1] // n
    y = x.reshape(*x.shape[:-1], c, n)[..., regular_permutation(group, g)]
    return y.reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# Filter-bank expansion
# ---------------------------------------------------------------------------------------------


def _spatial_index(group: str, k: int) -> np.ndarray:
    """(|G|, k, k) flat indices: ``(T_g K)[i, j] = K.flat[idx[g, i, j]]`` for a k x k array K."""
    base = np.arange(k * k).reshape(k, k)
    return np.stack(
        [transform_plane(base, group, g, axes=(0, 1)) for g in range(group_order(group))]
    )


def lift_kernel(w: jax.Array, group: str) -> jax.Array:
    """Lifting (Z2 -> G) filter bank: (k, k, Cin, Cout) -> (k, k, Cin, Cout*|G|).

    Output copy g of each filter is ``T_g w``; so ``conv(T_h x) = L_h conv(x)``.
    One static gather; no per-element ops.
    """
    k0, k1, cin, cout = w.shape
    if k0 != k1:
        raise ValueError(f"kernel must be square, got {w.shape}")
    n = group_order(group)
    idx = _spatial_index(group, k0)  # (G, k, k)
    flat = w.reshape(k0 * k1, cin, cout)
    out = jnp.take(flat, idx, axis=0)  # (G, k, k, Cin, Cout)
    return jnp.transpose(out, (1, 2, 3, 4, 0)).reshape(k0, k1, cin, cout * n)


def expand_group_kernel(w: jax.Array, group: str) -> jax.Array:
    """Group (G -> G) filter bank: (k, k, Cin, |G|, Cout) -> (k, k, Cin*|G|, Cout*|G|).

    Output copy g is ``w`` spatially transformed by ``T_g`` with its input group axis permuted by
    the group law: ``W_g(q, c, h) = w(T_g^-1 q, c, g^-1 h)``. Then ``conv(L_h x) = L_h conv(x)``.
    One static gather over the (k*k*|G|) kernel positions.
    """
    k0, k1, cin, gin, cout = w.shape
    n = group_order(group)
    if k0 != k1 or gin != n:
        raise ValueError(f"expected kernel (k, k, Cin, {n}, Cout), got {w.shape}")
    sp = _spatial_index(group, k0)  # (G, k, k)
    table = cayley_table(group)
    perm = table[inverses(group)]  # (G, G): perm[g, h] = g^-1 h
    idx = sp[:, :, :, None] * n + perm[:, None, None, :]  # (G, k, k, G)
    flat = jnp.transpose(w, (0, 1, 3, 2, 4)).reshape(k0 * k1 * n, cin, cout)
    out = jnp.take(flat, idx, axis=0)  # (G_out, k, k, G_in, Cin, Cout)
    out = jnp.transpose(out, (1, 2, 4, 3, 5, 0))  # (k, k, Cin, G_in, Cout, G_out)
    return out.reshape(k0, k1, cin * n, cout * n)


def lift_p4_kernel(w: jax.Array) -> jax.Array:
    """``lift_kernel(w, "p4")``: (k, k, Cin, Cout) -> (k, k, Cin, 4*Cout)."""
    return lift_kernel(w, "p4")


def lift_p4m_kernel(w: jax.Array) -> jax.Array:
    """``lift_kernel(w, "p4m")``: (k, k, Cin, Cout) -> (k, k, Cin, 8*Cout)."""
    return lift_kernel(w, "p4m")


def expand_p4_kernel(w: jax.Array) -> jax.Array:
    """``expand_group_kernel(w, "p4")``: (k, k, Cin, 4, Cout) -> (k, k, 4*Cin, 4*Cout)."""
    return expand_group_kernel(w, "p4")


def expand_p4m_kernel(w: jax.Array) -> jax.Array:
    """``expand_group_kernel(w, "p4m")``: (k, k, Cin, 8, Cout) -> (k, k, 8*Cin, 8*Cout)."""
    return expand_group_kernel(w, "p4m")


# ---------------------------------------------------------------------------------------------
# Geometry rule
# ---------------------------------------------------------------------------------------------


def explicit_padding(size: int, kernel: int, stride: int, padding: Padding) -> tuple[int, int]:
    """Resolve 'SAME' / 'VALID' / int / (lo, hi) padding to (lo, hi) for one axis, XLA-style."""
    if isinstance(padding, str):
        p = padding.upper()
        if p == "VALID":
            return (0, 0)
        if p == "SAME":
            out = -(-size // stride)
            total = max((out - 1) * stride + kernel - size, 0)
            return (total // 2, total - total // 2)
        raise ValueError(f"unknown padding {padding!r}")
    if isinstance(padding, int):
        return (padding, padding)
    lo, hi = padding[0]
    return (int(lo), int(hi))


def window_is_equivariant(size: int, kernel: int, stride: int, padding: Padding) -> bool:
    """True iff the sliding windows are symmetric about the axis centre (see module docstring).

    Rule: ``lo == hi and (size + lo + hi - kernel) % stride == 0``.
    """
    lo, hi = explicit_padding(size, kernel, stride, padding)
    return lo == hi and (size + lo + hi - kernel) % stride == 0 and size + lo + hi >= kernel


def check_window(size: int, kernel: int, stride: int, padding: Padding, what: str = "op") -> None:
    """Raise ValueError if a window op breaks exact equivariance on an axis of ``size``."""
    if not window_is_equivariant(size, kernel, stride, padding):
        lo, hi = explicit_padding(size, kernel, stride, padding)
        raise ValueError(
            f"{what}: kernel {kernel}, stride {stride}, padding ({lo}, {hi}) on size {size} "
            "breaks exact rotation equivariance; need lo == hi and (size + lo + hi - kernel) % "
            "stride == 0"
        )


def _lax_padding(padding: Padding, ndim: int = 2) -> str | list[tuple[int, int]]:
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * ndim
    return [tuple(p) for p in padding]


# ---------------------------------------------------------------------------------------------
# Convolution, pooling, normalisation
# ---------------------------------------------------------------------------------------------


def conv(
    x: jax.Array,
    kernel: jax.Array,
    stride: int = 1,
    padding: Padding = "SAME",
    precision: lax.Precision | None = None,
) -> jax.Array:
    """ONE ``lax.conv_general_dilated``, NHWC x HWIO -> NHWC, on an (expanded) kernel.

    On CPU compile it with ``runtime.xla_options.compiler_options()`` (as pcam_jax's steps
    are): XLA:CPU then runs the convolution and both its gradients through YNNPACK, faster than
    its default path (BENCHMARKS.md).
    """
    return lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride, stride),
        padding=_lax_padding(padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


def lifting_conv(
    x: jax.Array,
    w: jax.Array,
    group: str,
    stride: int = 1,
    padding: Padding = "SAME",
    precision: lax.Precision | None = None,
) -> jax.Array:
    """Z2 -> G convolution: x (N, H, W, Cin), w (k, k, Cin, Cout) -> (N, H', W', Cout*|G|).

    Equivariance: ``lifting_conv(T_h x) = L_h lifting_conv(x)`` under the geometry rule.
    """
    return conv(x, lift_kernel(w, group), stride, padding, precision)


def group_conv(
    x: jax.Array,
    w: jax.Array,
    group: str,
    stride: int = 1,
    padding: Padding = "SAME",
    precision: lax.Precision | None = None,
) -> jax.Array:
    """G -> G convolution: x (N, H, W, Cin*|G|), w (k, k, Cin, |G|, Cout) -> (..., Cout*|G|).

    Equivariance: ``group_conv(L_h x) = L_h group_conv(x)`` under the geometry rule.
    """
    return conv(x, expand_group_kernel(w, group), stride, padding, precision)


def split_group(x: jax.Array, group: str) -> jax.Array:
    """(..., C*|G|) -> (..., C, |G|)."""
    n = group_order(group)
    return x.reshape(*x.shape[:-1], x.shape[-1] // n, n)


def group_pool(x: jax.Array, group: str, reduce: Literal["max", "mean"] = "max") -> jax.Array:
    """Pool over the group axis: (N, H, W, C*|G|) -> (N, H, W, C).

    ``group_pool(L_h x) = T_h group_pool(x)``: the result is a plain (Z2) equivariant map.
    """
    y = split_group(x, group)
    return jnp.max(y, axis=-1) if reduce == "max" else jnp.mean(y, axis=-1)


def _pool(
    x: jax.Array, init: float, op: Callable, window: int, stride: int, padding: Padding
) -> jax.Array:
    pad = _lax_padding(padding)
    n, h, w, c = x.shape
    tiles = window == stride and pad in ("VALID", [(0, 0), (0, 0)])
    if tiles and h % window == 0 and w % window == 0:
        # windows tile the map: a reshape and a reduction, whose gradient is elementwise
        # (reduce_window's max gradient is a select-and-scatter, 2-3x the forward's cost on CPU)
        y = x.reshape(n, h // window, window, w // window, window, c)
        return jnp.max(y, axis=(2, 4)) if op is lax.max else jnp.sum(y, axis=(2, 4))
    if not isinstance(pad, str):
        pad = [(0, 0), *pad, (0, 0)]
    return lax.reduce_window(x, init, op, (1, window, window, 1), (1, stride, stride, 1), pad)


def max_pool(
    x: jax.Array, window: int = 2, stride: int = 2, padding: Padding = "VALID"
) -> jax.Array:
    """Spatial max pooling of NHWC maps (group channels untouched, so it commutes with L_h).

    Exact for geometries that pass ``window_is_equivariant`` (2x2/2 on even sizes: yes).
    """
    return _pool(x, -jnp.inf, lax.max, window, stride, padding)


def avg_pool(
    x: jax.Array, window: int = 2, stride: int = 2, padding: Padding = "VALID"
) -> jax.Array:
    """Spatial average pooling (zero padding counted), NHWC; equivariant like ``max_pool``."""
    s = _pool(x, 0.0, lax.add, window, stride, padding)
    return s / (window * window)


def invariant_pool(
    x: jax.Array,
    group: str,
    group_reduce: Literal["max", "mean"] = "mean",
    spatial_reduce: Literal["max", "mean"] = "mean",
) -> jax.Array:
    """Global pooling over space and group: (N, H, W, C*|G|) -> (N, C), invariant under L_h."""
    y = group_pool(x, group, group_reduce)
    return jnp.max(y, axis=(1, 2)) if spatial_reduce == "max" else jnp.mean(y, axis=(1, 2))


def _row_block(rows: int) -> int:
    """Largest divisor of ``rows`` that is at most 32: the first stage of a two-stage sum."""
    return max(d for d in range(1, min(rows, 32) + 1) if rows % d == 0)


def _two_stage_sum(x: jax.Array) -> jax.Array:
    b = _row_block(x.shape[0])
    partial_sums = lax.optimization_barrier(x.reshape(-1, b, x.shape[1]).sum(axis=1))
    return partial_sums.sum(axis=0)


def channel_sum(x: jax.Array) -> jax.Array:
    """Sum of (..., C) over every axis but the last -> (C,), in float32.

    On CPU in two stages, (M, C) -> (M / b, C) -> (C,) with b <= 32 and an optimisation
    barrier between them: with YNNPACK enabled (``xla_options``) XLA:CPU rewrites one large
    reduction into a reduce-window tree that runs several times slower; the barrier keeps XLA from
    merging the stages back, and the first stage fuses with the op that produces ``x``.
    Elsewhere one reduction (a barrier would stop GPU fusions).
    """
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    return lax.platform_dependent(x, cpu=_two_stage_sum, default=partial(jnp.sum, axis=0))


def _blocked_affine(x: jax.Array, mul: jax.Array, shift: jax.Array) -> jax.Array:
    c = x.shape[-1]
    blocks = x.reshape(-1, _row_block(x.size // c), c)
    shape = (blocks.shape[0], 1, c)
    mul, shift = lax.optimization_barrier(
        (jnp.broadcast_to(mul, shape), jnp.broadcast_to(shift, shape))
    )
    return (blocks * mul + shift).astype(x.dtype).reshape(x.shape)


def _plain_affine(x: jax.Array, mul: jax.Array, shift: jax.Array) -> jax.Array:
    return (x * mul + shift).astype(x.dtype)


def channel_affine(x: jax.Array, mul: jax.Array, shift: jax.Array) -> jax.Array:
    """``x * mul + shift`` for (..., C) ``x`` and per-channel (C,) ``mul`` and ``shift``.

    The values of the broadcast expression; on CPU written so that its gradients with respect
    to ``mul`` and ``shift`` reduce in two stages, like ``channel_sum``.
    """
    return lax.platform_dependent(x, mul, shift, cpu=_blocked_affine, default=_plain_affine)


def group_moments(
    x: jax.Array, group: str, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array]:
    """Batch-norm statistics shared across the |G| copies: mean and variance (C,), float32.

    Reduced over N, H, W and the group axis (and over devices with ``axis_name``), hence
    invariant under L_h. Two passes, the mean and then the mean squared deviation, on one
    device and on several: E[x^2] - E[x]^2 loses the variance to cancellation when
    |mean| >> std (1 and 2 devices then differed by 3e-4 in a running variance).
    """
    n = group_order(group)
    count = x.size // (x.shape[-1] // n)

    def group_mean(y: jax.Array) -> jax.Array:
        mean = channel_sum(y).reshape(-1, n).sum(axis=-1) / count
        return mean if axis_name is None else lax.pmean(mean, axis_name)

    mean = group_mean(x)
    var = group_mean(jnp.square(x.astype(jnp.float32) - jnp.repeat(mean, n)))
    return mean, var


def group_normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    group: str,
    epsilon: float = 1e-5,
) -> jax.Array:
    """Normalise with per-channel (C,) stats and affine parameters broadcast over the group axis.

    Equivariant: the same affine map is applied to every group copy of a channel.
    """
    n = group_order(group)
    mul = lax.rsqrt(var + epsilon)
    if scale is not None:
        mul = mul * scale
    shift = -mean * mul
    if bias is not None:
        shift = shift + bias
    mul = jnp.repeat(mul, n)
    shift = jnp.repeat(shift, n)
    return channel_affine(x, mul, shift)


def group_batch_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    group: str,
    epsilon: float = 1e-5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode group BN: returns (normalised x, batch mean (C,), batch variance (C,))."""
    mean, var = group_moments(x, group)
    return group_normalize(x, mean, var, scale, bias, group, epsilon), mean, var
