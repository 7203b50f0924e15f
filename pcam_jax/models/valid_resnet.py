"""Residual networks exact under dense slide inference: ``resnet_valid``, ``p4resnet_valid``,
``p4mresnet_valid`` (valid convolutions, as ScanNet; Lin et al. 2018).

The rule: no layer pads. Every output position then depends only on the input pixels of its
receptive field, so on a larger input (a slide block of n x n cells plus the window margin) the
network computes, at every position aligned to a window, exactly what it computes on that
window alone: dense inference (``cells``) equals window-by-window inference up to float
rounding, whatever the neighbours are. ``resnet.GroupResNet`` pads ('SAME'), so its dense pass
sees real neighbours where a window sees zeros and the two differ (BENCHMARKS.md, "Whole-slide
inference").

Layout on a 96x96 window (sizes per side; R is the receptive field of one final position)::

    stem     4x4 stride-2 VALID conv (lifting for p4/p4m), BN, ReLU     96 -> 47   R  4
    stage 0  residual block, two 3x3 VALID convs                        47 -> 43   R 12
    pool     3x3 stride-2 average                                       43 -> 21   R 16
    stage 1  residual block                                             21 -> 17   R 32
    pool     3x3 stride-2 average                                       17 -> 8    R 40
    stage 2  residual block                                              8 -> 4    R 72
    pool     2x2 stride-2 average                                        4 -> 2    R 80
    stage 3  residual block of two 1x1 convs                             2 -> 2    R 80
    head     mean over the 2x2 grid and the group, dropout, dense -> logits

Total stride 16; a 96-pixel window ends on a 2x2 grid whose four receptive fields of 80 pixels
at a step of 16 cover the window exactly. A residual block is conv-BN-ReLU-conv-BN (the second
BN's scale starts at zero) plus the shortcut, centre-cropped by one pixel per 3x3 conv (and a
1x1 conv and BN where the width changes), then ReLU.

Equivariance: every window op is symmetric about the map's centre (``groups.check_window``) on
inputs of 96 + 32 m pixels, which the pool kernels are chosen for (3x3 pools on the odd maps,
2x2 on the even one): the windows and the slide blocks (``16 * 32 + 64 = 576``). There the p4
and p4m models satisfy ``logits(T_h x) == logits(x)`` for h in their group, and a dense pass over
a turned block is the turned map; the z2 model is the plain control.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcam_jax.equivariant import groups
from pcam_jax.equivariant.layers import GroupBatchNorm, conv_layer, spatial_pool

# Features per group copy of each stage: the first three as resnet.GroupResNet's cost-matched
# widths (configs/cpu_subset.py); the last stage runs 1x1 convs on a 2x2 map, where four times
# the width costs little and gives back some of the parameters its 3x3 counterpart had.
DEFAULT_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "z2": (16, 32, 64, 512),
    "p4": (4, 8, 16, 128),
    "p4m": (4, 8, 16, 128),
}
POOLS = (None, 3, 3, 2)  # the pool kernel (stride 2) that opens each stage
KERNELS = (3, 3, 3, 1)  # each stage's conv kernel
FINAL_STRIDE = 16  # input pixels per position of the last feature map
RECEPTIVE_FIELD = 80  # input pixels of one final position
DENSE_STRIDE = 32  # the step of windows the pools stay symmetric for (inputs of 96 + 32 m)


def _crop(x: jax.Array, margin: int) -> jax.Array:
    """The centre of (N, H, W, C) without `margin` pixels on each side (symmetric: equivariant)."""
    if not margin:
        return x
    return x[:, margin:-margin, margin:-margin, :]


class ValidGroupResNet(nn.Module):
    """(N, 96 + 32 m, 96 + 32 m, 3) -> logits (N, num_classes); invariant for p4/p4m."""

    group: str = "z2"
    widths: tuple[int, ...] | None = None
    dropout_rate: float = 0.0
    num_classes: int = 2
    axis_name: str | None = None  # cross-device batch norm (shard_map / pmap axis)

    def stage_widths(self) -> tuple[int, ...]:
        widths = tuple(self.widths or DEFAULT_WIDTHS[self.group])
        if len(widths) != len(KERNELS):
            raise ValueError(f"widths {widths}: expected {len(KERNELS)} stages")
        return widths

    def dense_stride(self) -> int:
        """The step in input pixels at which ``cells`` reads windows out: 32, twice the last
        map's 16, since the pools are symmetric only on inputs of 96 + 32 m pixels."""
        return DENSE_STRIDE

    def dense_is_exact(self) -> bool:
        """True: ``cells`` equals the windows' own logits (no layer pads)."""
        return True

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, cells: tuple[int, int] | None = None
    ) -> jax.Array:
        """Logits (N, num_classes) of windows; with ``cells=(window, stride)`` (in units of
        ``dense_stride`` pixels: 3 and 1 for 96-pixel windows at 32) logits
        (N, H', W', num_classes) of every window of the input at that stride, each equal to the
        window's own logits."""
        g, n = self.group, groups.group_order(self.group)

        def bn(y: jax.Array, name: str, zero: bool = False) -> jax.Array:
            init = nn.initializers.zeros if zero else nn.initializers.ones
            return GroupBatchNorm(g, axis_name=self.axis_name, name=name, scale_init=init)(
                y, use_running_average=not train
            )

        widths = self.stage_widths()
        x = conv_layer(widths[0], 4, g, True, name="stem", strides=2, padding=0, use_bias=False)(x)
        x = nn.relu(bn(x, "stem_bn"))
        for s, (width, pool, k) in enumerate(zip(widths, POOLS, KERNELS, strict=True)):
            if pool:
                x = spatial_pool(x, "avg", pool, 2, "VALID")
            p = f"stage{s}"
            y = conv_layer(width, k, g, False, name=f"{p}_conv0", padding=0, use_bias=False)(x)
            y = nn.relu(bn(y, f"{p}_bn0"))
            y = conv_layer(width, k, g, False, name=f"{p}_conv1", padding=0, use_bias=False)(y)
            y = bn(y, f"{p}_bn1", zero=True)
            shortcut = _crop(x, k - 1)
            if shortcut.shape[-1] != width * n:
                shortcut = conv_layer(width, 1, g, False, name=f"{p}_proj", use_bias=False)(
                    shortcut
                )
                shortcut = bn(shortcut, f"{p}_proj_bn")
            x = nn.relu(shortcut + y)
        x = groups.group_pool(x, g, "mean")  # (N, H', W', C), equivariant
        if cells is None:
            features = jnp.mean(x, axis=(1, 2))
            features = nn.Dropout(self.dropout_rate)(features, deterministic=not train)
            return nn.Dense(self.num_classes, name="classifier")(features).astype(jnp.float32)
        window, stride = (c * DENSE_STRIDE for c in cells)  # in input pixels
        grid = (window - RECEPTIVE_FIELD) // FINAL_STRIDE + 1  # a window's final positions
        pooled = groups.avg_pool(x, grid, stride // FINAL_STRIDE, "VALID")
        return nn.Dense(self.num_classes, name="classifier")(pooled).astype(jnp.float32)
