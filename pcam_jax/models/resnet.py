"""Compute-efficient residual networks for 96x96 patches: ``resnet``, ``p4resnet``, ``p4mresnet``.

Built for accuracy per minute of compute on small hardware, not for parameter parity with the
study's models. Layout (every window passes the exact-equivariance rule of ``equivariant.groups``)::

    stem     4x4 stride-2 'SAME' conv (lifting for p4/p4m), BN, ReLU     96 -> 48
    stage s  ``blocks[s]`` basic residual blocks of ``widths[s]`` features per group copy; every
             stage after the first opens with 2x2/2 average pooling      48 -> 24 -> 12 -> 6
    head     global mean over space and over the group (invariant), dropout, dense -> logits

A basic block is conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (a 1x1 conv and BN when the width
changes), then ReLU; the second BN's scale starts at zero so each block starts as the identity.
The stride-2 stem is the compute saving: the study's CNNs spend most of their time on 96x96 maps,
while here no feature map is larger than 48x48. Downsampling by pooling, not by strided 3x3
convs, because a 3x3 stride-2 window on an even size is never exactly equivariant.

Equivariance: for h in the group (D4 for p4m, C4 for p4), every feature map satisfies
``f(T_h x) = L_h f(x)`` and the logits are invariant, ``logits(T_h x) == logits(x)`` (float
tolerance); the z2 model has no such property (it is the plain control).

``widths`` are features per group copy. A G-conv layer with ``w`` features per copy runs one
convolution with ``w * |G|`` channels in and out, so its cost grows as ``(w |G|)^2``. With the
defaults (``DEFAULT_WIDTHS``) the group models cost about 4x the plain one's FLOPs; the
``cpu_subset`` recipe picks its own widths (``WIDTHS`` in configs/cpu_subset.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcam_jax.equivariant import groups
from pcam_jax.equivariant.layers import GroupBatchNorm, conv_layer, spatial_pool

# Features per group copy of each stage. p4 and p4m run convolutions of the same total width
# (widths x |G| = 32 ... 256 channels), twice the plain model's, so they cost about 4x its FLOPs
# per image; measured FLOPs, rates and AUC per minute are in BENCHMARKS.md.
DEFAULT_WIDTHS: dict[str, tuple[int, ...]] = {
    "z2": (16, 32, 64, 128),
    "p4": (8, 16, 32, 64),
    "p4m": (4, 8, 16, 32),
}


class GroupResNet(nn.Module):
    """Residual G-CNN: (N, 96, 96, 3) -> logits (N, num_classes), invariant for p4/p4m."""

    group: str = "z2"
    widths: tuple[int, ...] | None = None
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    stem_features: int | None = None
    width_multiplier: float = 1.0
    dropout_rate: float = 0.0  # before the classifier, on the invariant features
    # > 0: the model sees only the centre crop x crop pixels of its input (PCam's label is about
    # the centre 32x32); the crop is symmetric, so it commutes with the group
    input_crop: int = 0
    # "mean": global mean over space and group; "mean+centre": that, concatenated with the mean
    # over the central quarter of the last map's width (the region over the labelled centre);
    # both are invariant, since the centre block maps to itself under D4
    head_pool: str = "mean"
    num_classes: int = 2
    axis_name: str | None = None  # cross-device batch norm (shard_map / pmap axis)

    def stage_widths(self) -> tuple[int, ...]:
        """Features per group copy of each stage, after ``width_multiplier``."""
        base = self.widths or DEFAULT_WIDTHS[self.group]
        return tuple(max(1, round(w * self.width_multiplier)) for w in base)

    def dense_stride(self) -> int | None:
        """Input pixels per position of the last feature map (16: the stride-2 stem and three
        2x2 pools) when ``cells`` can run this model fully convolutionally, else None: the
        ``mean+centre`` head and ``input_crop`` are defined on one window only."""
        if self.head_pool != "mean" or self.input_crop:
            return None
        return 2 ** len(self.stage_widths())

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, cells: tuple[int, int] | None = None
    ) -> jax.Array:
        """Logits (N, num_classes) of 96x96 windows; with ``cells=(window, stride)`` (in
        positions of the last feature map) logits (N, H', W', num_classes) of every window of
        ``window`` x ``window`` positions at ``stride``, from one pass over a larger input
        (dense inference: the head's global mean becomes a ``window`` x ``window`` mean)."""
        g = self.group
        widths = self.stage_widths()
        if len(self.blocks) != len(widths):
            raise ValueError(f"blocks {self.blocks} and widths {widths} differ in length")
        n = groups.group_order(g)
        if self.input_crop:
            size = x.shape[1]
            if (size - self.input_crop) % 2 or not 0 < self.input_crop <= size:
                raise ValueError(
                    f"input_crop={self.input_crop} on {size}x{size} images: expected an even "
                    "margin (a symmetric centre crop)"
                )
            lo = (size - self.input_crop) // 2
            x = x[:, lo : lo + self.input_crop, lo : lo + self.input_crop, :]

        def bn(y: jax.Array, name: str, zero: bool = False) -> jax.Array:
            init = nn.initializers.zeros if zero else nn.initializers.ones
            return GroupBatchNorm(g, axis_name=self.axis_name, name=name, scale_init=init)(
                y, use_running_average=not train
            )

        stem = self.stem_features or widths[0]
        x = conv_layer(stem, 4, g, True, name="stem", strides=2, padding=1, use_bias=False)(x)
        x = nn.relu(bn(x, "stem_bn"))
        for s, (width, count) in enumerate(zip(widths, self.blocks, strict=True)):
            if s > 0:
                x = spatial_pool(x, "avg", 2, 2, "VALID")
            for b in range(count):
                p = f"stage{s}_block{b}"
                y = conv_layer(width, 3, g, False, name=f"{p}_conv0", use_bias=False)(x)
                y = nn.relu(bn(y, f"{p}_bn0"))
                y = conv_layer(width, 3, g, False, name=f"{p}_conv1", use_bias=False)(y)
                y = bn(y, f"{p}_bn1", zero=True)
                if x.shape[-1] != width * n:
                    x = conv_layer(width, 1, g, False, name=f"{p}_proj", use_bias=False)(x)
                    x = bn(x, f"{p}_proj_bn")
                x = nn.relu(x + y)
        if cells is not None:
            if self.dense_stride() is None:
                raise ValueError(
                    f"head_pool={self.head_pool!r}, input_crop={self.input_crop}: "
                    "no dense inference"
                )
            window, stride = cells
            pooled = groups.avg_pool(groups.group_pool(x, g, "mean"), window, stride, "VALID")
            return nn.Dense(self.num_classes, name="classifier")(pooled).astype(jnp.float32)
        features = groups.invariant_pool(x, g, group_reduce="mean", spatial_reduce="mean")
        if self.head_pool == "mean+centre":
            size = x.shape[1]
            half = max(1, size // 4)  # central block of width size/2 (at least 2x2 on even maps)
            lo = size // 2 - half
            centre = x[:, lo : size - lo, lo : size - lo, :]
            centre = groups.invariant_pool(centre, g, group_reduce="mean", spatial_reduce="mean")
            features = jnp.concatenate([features, centre], axis=-1)
        elif self.head_pool != "mean":
            raise ValueError(f"head_pool={self.head_pool!r}: expected 'mean' or 'mean+centre'")
        x = nn.Dropout(self.dropout_rate)(features, deterministic=not train)
        return nn.Dense(self.num_classes, name="classifier")(x).astype(jnp.float32)
